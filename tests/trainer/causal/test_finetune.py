"""Causal fine-tuning: loss on answers only, resumable checkpoints, QLoRA on a CUDA device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.causal import data, finetune, merge, tiny
from trainer.causal.recipe import CausalRecipe
from trainer.errors import UsageError
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs a CUDA device; none here")
def test_qlora_on_cuda_trains_and_merges(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes")
    out = finetune.run(data_dir, tmp_path / "ft", recipe(max_steps=3, qlora="on", train_embeddings=False))
    assert json.loads((out / "stage.json").read_text())["params"]["mode"] == "qlora"
    merged = merge.run(out, tmp_path / "merged", "float16")
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.model").is_file()
