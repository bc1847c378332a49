"""Both fine-tuning stages on the Accelerate engine, in two processes (torchrun, gloo, on this CPU): the same
global batches give the one-process result (within float summation order), with or without micro-batches, and
a checkpoint written by two processes resumes in one. Only the main process writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.causal import data as causal_data
from trainer.causal import tiny
from trainer.encoder import base as encoder_base
from trainer.encoder import data as encoder_data
from trainer.records import write_builtin

TORCHRUN = Path(sys.executable).parent / "torchrun"
CAUSAL = "--lr 1e-2 --batch-size 8 --train-embeddings true --lora-dropout 0 --threads 1 --checkpoint-every 3"
ENCODER = "--batch-size 8 --dropout 0 --warmup 0 --threads 1 --lr 1e-3 --head-lr 1e-3"
TOLERANCE = 2e-4  # absolute, on weights after a few steps: DDP sums gradients in another order


def trainer(argv: list[str], processes: int = 1) -> None:
    launch = [str(TORCHRUN), "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launch, "-m", "trainer", *argv], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < TOLERANCE, worst
    moved = max(float(a[k].float().abs().max()) for k in a)
    assert moved > 0


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engine-causal")
    records = write_builtin(root / "train.jsonl")
    base = tiny.make_base(root / "base", tiny.corpus(records), "llama")
    return causal_data.run(records, records, root / "data", base, "classify", 32)


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter" / "adapter_model.safetensors")


def test_causal_two_processes_equal_one_with_the_same_global_batch(causal_dir: Path, tmp_path: Path) -> None:
    trainer(["causal-finetune", str(causal_dir), "--out", str(tmp_path / "one"), "--max-steps", "6", *CAUSAL.split()])
    two = ["causal-finetune", str(causal_dir), "--out", str(tmp_path / "two"), "--max-steps", "6", *CAUSAL.split()]
    trainer([*two, "--micro-batch", "2"], processes=2)  # 8 rows: 4 a process, 2 micro-batches of 2 each
    assert_close(adapter(tmp_path / "one"), adapter(tmp_path / "two"))
    meta = json.loads((tmp_path / "two" / "stage.json").read_text())
    assert meta["params"]["engine"] == {"processes": 2, "precision": "no"}
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == [
        "step-0000003.pt",
        "step-0000006.pt",
    ]


def test_a_checkpoint_written_by_two_processes_resumes_in_one(causal_dir: Path, tmp_path: Path) -> None:
    whole = ["causal-finetune", str(causal_dir), "--out", str(tmp_path / "whole"), "--max-steps", "9"]
    trainer([*whole, *CAUSAL.split()])
    split = ["causal-finetune", str(causal_dir), "--out", str(tmp_path / "split"), "--max-steps", "9"]
    trainer([*split, *CAUSAL.split()], processes=2)
    (tmp_path / "split" / "checkpoints" / "step-0000009.pt").unlink()  # as if the two had stopped after step 6
    trainer([*split, *CAUSAL.split()])  # one process takes over at step 6, on the batches that come next
    assert_close(adapter(tmp_path / "whole"), adapter(tmp_path / "split"))
    steps = [h["step"] for h in json.loads((tmp_path / "split" / "stage.json").read_text())["results"]["history"]]
    assert steps == [3, 6, 9]


def test_encoder_two_processes_equal_one(tmp_path: Path) -> None:
    records = write_builtin(tmp_path / "train.jsonl")
    base = encoder_base.make_tiny(tmp_path / "base")
    config = json.loads((base / "config.json").read_text())  # no dropout inside BERT either: both runs alike
    (base / "config.json").write_text(
        json.dumps({**config, "hidden_dropout_prob": 0, "attention_probs_dropout_prob": 0})
    )
    data_dir = encoder_data.run(records, records, tmp_path / "data", base, 32)
    common = [str(data_dir), "--base", str(base), "--max-steps", "6", *ENCODER.split()]
    trainer(["finetune", *common, "--out", str(tmp_path / "one")])
    trainer(["finetune", *common, "--out", str(tmp_path / "two")], processes=2)
    one, two = (load_file(tmp_path / name / "model.safetensors") for name in ("one", "two"))
    assert_close(one, two)
    shutil.rmtree(tmp_path / "data")
