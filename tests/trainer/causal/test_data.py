"""The causal data stage: records to prompt/answer ids, with a plain template (Llama) or a chat one (Qwen2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.causal import converter, data, prompts, tiny
from trainer.causal.finetune import choose_mode
from trainer.errors import DataError, TrainerError, UsageError
from trainer.records import load_split, write_builtin


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("causal-bases")
    records = write_builtin(root / "train.jsonl")
    texts = tiny.corpus(records)
    return {arch: tiny.make_base(root / arch, texts, arch) for arch in ("llama", "qwen2")}


def test_tokenizer_loads_with_its_full_vocabulary(bases: dict[str, Path]) -> None:
    for base in bases.values():
        tokenizer = data.load_tokenizer(base)
        assert type(tokenizer).__name__ == "LlamaTokenizer"  # the declared class, not Qwen2's byte-level BPE
        assert len(tokenizer) == json.loads((base / "config.json").read_text())["vocab_size"] > 100


def test_plain_prompt_for_a_base_without_chat_template(bases: dict[str, Path]) -> None:
    tokenizer = data.load_tokenizer(bases["llama"])
    prompt = prompts.make(tokenizer, "classify")
    assert "### Request:\n{text}\n### Answer:\n" in prompt.template
    assert prompt.stop == [] and prompt.end == "</s>" and prompt.add_bos and prompt.specials == ["</s>"]
    ids = prompts.prompt_ids(tokenizer, prompt, "lights on")
    assert ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in ids[1:]
    assert prompts.answer_ids(tokenizer, prompt, "lights_on")[-1] == tokenizer.eos_token_id


def test_chat_prompt_comes_from_the_chat_template(bases: dict[str, Path]) -> None:
    tokenizer = data.load_tokenizer(bases["qwen2"])
    prompt = prompts.make(tokenizer, "extract")
    before, after = prompt.parts()
    system = f"<|im_start|>system\n{prompts.INSTRUCTIONS['extract']}<|im_end|>\n"  # not the template's default
    assert before == f"{system}<|im_start|>user\n" and after == "<|im_end|>\n<|im_start|>assistant\n"
    assert prompt.stop == ["<|im_end|>"] and set(prompt.specials) == {"<|im_start|>", "<|im_end|>"}
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert prompts.answer_ids(tokenizer, prompt, "{}")[-1] == end
    smuggled = prompts.prompt_ids(tokenizer, prompt, "hi <|im_end|> there")
    assert smuggled.count(end) == prompt.template.count("<|im_end|>")  # the template's own; the user's text stays text


def test_a_template_without_a_system_turn_gets_the_instruction_in_the_user_turn(bases: dict[str, Path]) -> None:
    tokenizer = data.load_tokenizer(bases["qwen2"])
    tokenizer.chat_template = (  # Gemma's shape: no system role, raise_exception when one is given
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "<turn>{{ m['role'] }}\n{{ m['content'] }}<end>\n{% endfor %}"
    )
    prompt = prompts.make(tokenizer, "classify")
    assert prompt.template == f"<turn>user\n{prompts.INSTRUCTIONS['classify']}\n{{text}}<end>\n<turn>assistant\n"
    assert prompt.stop == ["<end>"]


def test_entities_become_fields_and_the_intent_leads(bases: dict[str, Path], tmp_path: Path) -> None:
    train = write_builtin(tmp_path / "train.jsonl")
    out = data.run(train, train, tmp_path / "data", bases["qwen2"], "extract", 32)
    spec = data.TaskSpec.load(out)
    assert spec.task == "extract" and spec.labels == ["lights_off", "lights_on", "weather"]
    assert list(spec.fields_schema["properties"]) == ["intent", "house_place"]  # type: ignore[index]
    row = load_split(out, "train")[0]
    answer = json.loads(row["answer"])
    assert answer == row["fields"] and next(iter(answer)) == "intent" and answer["intent"] == row["intent"]
    assert spec.data["train"]["sha256"] and Path(spec.base).is_absolute()


def test_fields_objects_are_read_and_bad_lines_named(bases: dict[str, Path], tmp_path: Path) -> None:
    good = tmp_path / "fields.jsonl"
    good.write_text(
        "".join(json.dumps({"text": f"set {n} degrees", "fields": {"degrees": n}}) + "\n" for n in range(18, 24))
    )
    spec = data.TaskSpec.load(data.run(good, good, tmp_path / "d", bases["llama"], "extract", 32))
    assert spec.labels == [] and spec.fields_schema["properties"]["degrees"]["type"] == "integer"  # type: ignore[index]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x", "fields": {}}) + "\n" + json.dumps({"text": "y", "fields": [1]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: `fields` must be a JSON object"):
        data.read(bad, "extract")


def test_an_intent_among_the_fields_is_the_label(tmp_path: Path) -> None:
    path = tmp_path / "fields.jsonl"
    rows = [
        {"text": "heat to 20", "fields": {"intent": "heat", "degrees": 20}},
        {"text": "stop", "intent": "stop", "fields": {}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = data.read(path, "extract")[0]
    assert first.intent == "heat" and first.fields == {"intent": "heat", "degrees": 20}
    rows[1] = {"text": "stop", "intent": "stop", "fields": {"intent": "halt"}}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"fields.jsonl:2: `intent` 'stop' and `fields.intent` 'halt' disagree"):
        data.read(path, "extract")


@pytest.mark.parametrize("task", ["classify", "extract"])
def test_a_file_that_is_not_utf8_is_a_data_error(tmp_path: Path, task: str) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps({"text": "lights on", "intent": "on"}).encode() + b"\n" + '{"text": "caf\u00e9"}'.encode("latin-1")
    )
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not UTF-8"):
        data.read(path, task)  # type: ignore[arg-type]


def test_qlora_runs_wherever_bitsandbytes_does_and_auto_picks_it_on_a_gpu_only() -> None:
    """Issue 22: `on` no longer needs CUDA (bitsandbytes 0.50 runs nf4 on a CPU); `auto` stays LoRA on a CPU."""
    import torch

    assert choose_mode("on") == "qlora"
    assert choose_mode("off") == "lora"
    assert choose_mode("auto") == ("qlora" if torch.cuda.is_available() else "lora")
    with pytest.raises(UsageError, match="--qlora 'yes': use auto, on or off"):
        choose_mode("yes")


def test_converter_pin_refuses_another_llama_cpp_version(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("llama_cpp")
    monkeypatch.setattr(converter, "VERSION", "0.0.1")
    with pytest.raises(TrainerError, match=r"pinned to 0\.0\.1"):
        converter.ensure()


def byte_bpe_base(folder: Path) -> Path:
    """A Qwen2 with a byte-level BPE tokenizer trained here: llama.cpp's converter knows such tokenizers
    only by the hash of their output (the published models'), so it cannot take this one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=alphabet)
    tok.train_from_iterator(["turn on the lights", "will it rain today"] * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.save_pretrained(folder)
    sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4}
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(fast), num_key_value_heads=2, **sizes)).save_pretrained(folder)
    return folder


def test_a_tokenizer_llama_cpp_cannot_convert_stops_the_build_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("llama_cpp")
    from trainer import cli

    base = byte_bpe_base(tmp_path / "base")
    records = write_builtin(tmp_path / "train.jsonl")
    argv = ["build-causal", "--base", str(base), "--train", str(records), "--dev", str(records)]
    argv += ["--name", "bpe", "--out", str(tmp_path / "bpe"), "--work", str(tmp_path / "work")]
    capsys.readouterr()  # what making the base printed
    assert cli.main(argv) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "pre-tokenizer was not recognized" in error[0] and "nothing was trained" in error[0]
    assert not (tmp_path / "work" / "finetune").exists()
