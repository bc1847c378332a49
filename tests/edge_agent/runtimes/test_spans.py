from edge_agent.runtimes.spans import decode_bio

TEXT = "turn on the living room lights at seven am"


def offsets(words: list[str]) -> list[tuple[int, int]]:
    out, pos = [(0, 0)], 0
    for w in words:
        start = TEXT.index(w, pos)
        out.append((start, start + len(w)))
        pos = start + len(w)
    return [*out, (0, 0)]


def test_runs_become_spans_with_char_offsets() -> None:
    words = TEXT.split()
    tags = ["O", "O", "O", "O", "B-house_place", "I-house_place", "O", "O", "B-time", "I-time", "O"]
    spans = decode_bio(TEXT, tags, offsets(words), [0.9] * len(tags))
    assert [(s.type, s.value) for s in spans] == [("house_place", "living room"), ("time", "seven am")]
    assert all(TEXT[s.start : s.end] == s.value for s in spans)


def test_subword_joins_open_span_and_orphan_i_starts_one() -> None:
    text = "vacuum cleaner now"
    offs = [(0, 0), (0, 3), (3, 6), (7, 14), (15, 18), (0, 0)]
    tags = ["O", "B-device", "O", "I-device", "I-time", "O"]
    spans = decode_bio(text, tags, offs, [0.5, 0.9, 0.8, 0.7, 0.6, 0.5])
    assert [(s.type, s.value) for s in spans] == [("device", "vacuum cleaner"), ("time", "now")]
    assert spans[0].confidence == 0.7


def test_with_word_ids_only_pieces_of_the_same_word_join() -> None:
    text = "call emma's phone"
    offs = [(0, 0), (0, 4), (5, 7), (7, 9), (9, 10), (10, 11), (12, 17), (0, 0)]
    words = [None, 0, 1, 1, 2, 3, 4, None]  # "em" "##ma" are one word; "'" and "s" are words of their own
    tags = ["O", "O", "B-person", "O", "O", "O", "O", "O"]
    spans = decode_bio(text, tags, offs, [0.9] * len(tags), words)
    assert [s.value for s in spans] == ["emma"]
    assert [s.value for s in decode_bio(text, tags, offs, [0.9] * len(tags))] == ["emma's"]


def test_a_span_never_starts_inside_a_word() -> None:
    text = "nine am cst to est"
    offs = [(0, 0), (0, 4), (5, 7), (8, 10), (10, 11), (12, 14), (15, 18), (0, 0)]
    words = [None, 0, 1, 2, 2, 3, 4, None]  # "cs" "##t" are one word
    tags = ["O", "O", "O", "O", "B-time_zone", "O", "B-time_zone", "O"]
    spans = decode_bio(text, tags, offs, [0.9] * len(tags), words)
    assert [(s.value, s.start) for s in spans] == [("cst", 8), ("est", 15)]
