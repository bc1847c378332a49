"""Causal fine-tuning: loss on answers only, resumable checkpoints, QLoRA (nf4 on this CPU), the merge check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.causal import data, finetune, merge, tiny
from trainer.causal.recipe import CausalRecipe
from trainer.errors import TrainerError, UsageError
from trainer.records import load_split, write_builtin


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("causal-ft")
    records = write_builtin(root / "train.jsonl")
    base = tiny.make_base(root / "base", tiny.corpus(records), "llama")
    return data.run(records, records, root / "data", base, "classify", 32)


def recipe(**kw: object) -> CausalRecipe:
    return CausalRecipe(**{"lr": 1e-2, "batch_size": 8, "train_embeddings": True, "threads": 1, **kw})  # type: ignore[arg-type]


def test_only_answer_tokens_carry_loss(data_dir: Path) -> None:
    rows = load_split(data_dir, "train")[:3]
    batch = finetune.collate(rows, pad=0)
    for i, row in enumerate(rows):
        labels = batch["labels"][i].tolist()
        start, end = len(row["prompt_ids"]), len(row["prompt_ids"]) + len(row["answer_ids"])
        assert labels[:start] == [finetune.IGNORE] * start and labels[start:end] == row["answer_ids"]
        assert all(x == finetune.IGNORE for x in labels[end:])


def test_a_rerun_resumes_from_the_last_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    finetune.run(data_dir, out, recipe(max_steps=4, checkpoint_every=2))
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == ["step-0000002.pt", "step-0000004.pt"]
    last = out / "checkpoints" / "step-0000004.pt"
    state = torch.load(last, weights_only=False)
    torch.save({**state, "seconds": 1e6}, last)  # as if the first run had trained for 11 days
    finetune.run(data_dir, out, recipe(max_steps=6, checkpoint_every=2))
    results = json.loads((out / "stage.json").read_text())["results"]
    assert [h["step"] for h in results["history"]] == [3, 4, 6]  # epoch ends (3 steps), first run's end, then 5-6
    assert results["seconds"] > 1e6  # the training's time, every run of it, not the last run's
    assert (out / "adapter" / "adapter_config.json").is_file()
    with pytest.raises(UsageError, match=r"made with another recipe; resuming would mix two trainings"):
        finetune.run(data_dir, out, recipe(max_steps=8, checkpoint_every=2, lr=1e-3))


def test_qlora_trains_on_4bit_weights_and_the_merge_keeps_what_it_learnt(data_dir: Path, tmp_path: Path) -> None:
    """nf4 + double quantization on this CPU (bitsandbytes >= 0.49); the merge measures both ways of folding the
    adapter in and keeps the one that answers as the trained model does."""
    import bitsandbytes as bnb

    base = Path(json.loads((data_dir / "stage.json").read_text())["params"]["base"])
    quantized = finetune.load_base(base, "qlora", torch.device("cpu"))
    layers = [m for m in quantized.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.quant_state.nested for m in layers)  # double quantization
    out = finetune.run(data_dir, tmp_path / "ft", recipe(max_steps=12, qlora="on", train_embeddings=False, lr=3e-3))
    meta = json.loads((out / "stage.json").read_text())
    assert meta["params"]["mode"] == "qlora"
    losses = [h["loss"] for h in meta["results"]["history"]]
    assert losses[-1] < losses[0]
    merged = merge.run(out, tmp_path / "merged", "float32")
    facts = json.loads((merged / "stage.json").read_text())
    candidates = facts["results"]["candidates"]
    assert set(candidates) == {"original", "dequantized"} and facts["params"]["into"] == "dequantized"
    assert candidates["dequantized"]["mean_logit_diff"] < candidates["original"]["mean_logit_diff"]
    assert facts["results"]["saved"]["next_token"] >= merge.MIN_AGREEMENT


def test_qlora_on_without_bitsandbytes_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name))
    with pytest.raises(TrainerError, match=r"--qlora on needs bitsandbytes: pip install"):
        finetune.choose_mode("on")
    assert finetune.choose_mode("auto") == "lora"


def test_the_merge_check_refuses_an_adapter_merged_twice(data_dir: Path, tmp_path: Path) -> None:
    out = finetune.run(data_dir, tmp_path / "ft", recipe(max_steps=12))
    base = Path(json.loads((out / "stage.json").read_text())["params"]["base"])
    rows = load_split(data_dir, "dev")[: merge.CHECK_PROMPTS]
    batches = [finetune.collate(rows[k : k + 16], finetune.pad_id(base)) for k in range(0, len(rows), 16)]
    reference = merge.logits_on(merge.trained_model(base, out / finetune.ADAPTER, "lora"), batches)
    once = merge.merged_into(merge.fp32_base(base), out / finetune.ADAPTER)
    assert merge.compare(reference, merge.logits_on(once, batches)).acceptable()
    twice = merge.merged_into(once, out / finetune.ADAPTER)  # the update folded in a second time
    wrong = merge.compare(reference, merge.logits_on(twice, batches))
    assert not wrong.acceptable(), wrong
