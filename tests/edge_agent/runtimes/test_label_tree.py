"""The label tree's bookkeeping, on made-up token ids (pure logic; the search itself is tested on a real
model in test_gguf_chain)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.runtimes.label_tree import LabelTree, shared

END = 9
LABELS = [[1, 2, 3, END], [1, 2, 4, END], [5, END]]  # iot_hue_lightoff, iot_hue_lighton, weather


def test_forced_tokens_are_skipped_to_the_next_branch() -> None:
    tree = LabelTree(LABELS)
    assert tree.settle(()) == ()  # the root branches: 1 or 5
    assert tree.settle((1,)) == (1, 2)  # 2 is forced after 1
    assert tree.settle((5,)) == (5, END)  # a whole label: nothing left to ask
    assert tree.settle((1, 2, 3)) == (1, 2, 3, END)


def test_a_branch_gives_its_children_the_softmax_over_them_alone() -> None:
    tree = LabelTree(LABELS)
    logits = np.full(10, -50.0)
    logits[[1, 5]] = [2.0, 0.0]
    kids = tree.branch((), 0.0, logits)
    assert set(kids) == {(1, 2), (5, END)}
    assert np.isclose(np.exp(kids[(1, 2)]) + np.exp(kids[(5, END)]), 1.0)
    assert np.isclose(kids[(1, 2)] - kids[(5, END)], 2.0)


def test_labels_below_an_open_node_share_its_probability() -> None:
    tree = LabelTree(LABELS)
    scores = tree.scores({(1, 2): np.log(0.8), (5, END): np.log(0.2)})
    assert np.allclose(np.exp(scores), [0.4, 0.4, 0.2])  # the two under (1, 2) split it until expanded


def test_two_labels_with_the_same_tokens_are_refused() -> None:
    with pytest.raises(ValueError, match="same tokens"):
        LabelTree([[1, END], [1, END]])


def test_shared_prefix_length() -> None:
    assert shared((1, 2, 3), (1, 2, 4)) == 2 and shared((), (1,)) == 0 and shared((1, 2), (1, 2)) == 2
