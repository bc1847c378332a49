"""Stage `export`: the joint model -> ONNX fp32 (checked against PyTorch) -> int8 (checked against fp32).

torch.onnx (TorchScript exporter, `dynamo=False`) rather than optimum: optimum-onnx pins
transformers<4.58, which conflicts with the transformers 5 that our default base requires. int8 uses
onnxruntime's dynamic quantizer, per-tensor and per-channel; the one with the better dev accuracy wins.

Output folder: `model.onnx` (the chosen int8), `model.fp32.onnx`, the int8 candidates, labels and
tokenizer copied from the model folder, `stage.json` with the checks' numbers. `build_manifest`
describes such files as the agent's ONNX runtime reads them (for evaluate, then publish).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process
from tokenizers import Tokenizer
from tqdm import tqdm

from edge_agent import manifest as mf
from trainer import artifact, records, stage
from trainer.encoder import base as encoder_base
from trainer.encoder import data, finetune, model
from trainer.errors import TrainerError

INPUTS = ["input_ids", "attention_mask"]
OUTPUTS = ["intent_logits", "tag_logits"]
FP32 = "model.fp32.onnx"
MODEL = "model.onnx"
QUANT = {"int8-dynamic": False, "int8-per-channel": True}  # name -> per_channel
PARITY_TOLERANCE = 1e-3


def run(model_dir: Path, data_dir: Path, out: Path, opset: int = 17) -> Path:
    """Export, quantize, check; the int8 variant with the best dev intent accuracy becomes model.onnx."""
    meta = stage.read(model_dir, "finetune")
    data_meta = stage.read(data_dir, "data")
    dev = records.load_split(data_dir, "dev")
    net = model.load(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    to_onnx(net, out / FP32, opset)
    parity = check_parity(net, out / FP32, dev)
    variants = quantize_all(out / FP32, out)
    scores = {
        name: dev_accuracy(path, dev)
        for name, path in tqdm([("fp32", out / FP32), *variants.items()], desc="export: dev accuracy", leave=False)
    }
    chosen = max(variants, key=lambda name: (scores[name], -variants[name].stat().st_size))
    shutil.copy(variants[chosen], out / MODEL)
    for name in (data.LABELS, encoder_base.TOKENIZER):
        shutil.copy(model_dir / name, out / name)
    stage.write(
        out,
        "export",
        {
            "opset": opset,
            "inputs": INPUTS,
            "outputs": OUTPUTS,
            "base_model": meta["params"]["base_model"],
            "data": data_summary(data_meta),
        },
        {"weights": model_dir / model.WEIGHTS, "dev": data_dir / "dev.jsonl"},
        {
            "parity_fp32_vs_torch": parity,
            "dev_intent_acc": scores,
            "chosen": chosen,
            "int8_agreement_with_fp32": agreement(out / FP32, out / MODEL, dev),
            "sizes": {p.name: p.stat().st_size for p in out.glob("*.onnx")},
        },
    )
    return out


def data_summary(data_meta: dict[str, Any]) -> dict[str, Any]:
    """What the manifest says about the training data: file names, sha256, example counts."""
    counts = data_meta["results"]["counts"]
    return {
        split: {"file": Path(info["path"]).name, "sha256": info["sha256"], **counts[split]}
        for split, info in data_meta["inputs"].items()
    }


def build_manifest(
    folder: Path,
    name: str,
    version: str,
    files: list[tuple[str, str]],
    labels: data.Labels,
    export_meta: dict[str, Any],
    calibration: dict[str, Any],
) -> mf.Manifest:
    """The manifest for the files in `folder`; `calibration` is the evaluate stage's results (may be empty)."""
    tokenizer = Tokenizer.from_file(str(folder / encoder_base.TOKENIZER))
    extract = bool(labels.entity_types)
    return artifact.manifest(
        folder,
        files,
        calibration,
        name=name,
        version=version,
        runtime="onnx",
        task="classify+extract" if extract else "classify",
        labels=labels.intents,
        entity_types=labels.entity_types,
        tags=labels.tags,
        max_input_tokens=labels.max_tokens,
        tokenizer={
            "file": encoder_base.TOKENIZER,
            "vocab_size": tokenizer.get_vocab_size(),
            "add_special_tokens": True,
        },
        onnx=mf.OnnxIO(
            inputs=export_meta["params"]["inputs"],
            intent_logits="intent_logits",
            tag_logits="tag_logits",
        ),
        base_model=export_meta["params"]["base_model"],
        data=export_meta["params"]["data"],
    )


def to_onnx(net: model.JointModel, path: Path, opset: int) -> None:
    """Trace with a padded batch of two so batch and sequence axes stay dynamic."""
    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2000, 102, 0]])
    mask = (ids != 0).long()
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "intent_logits": {0: "batch"},
        "tag_logits": {0: "batch", 1: "sequence"},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about python branches; parity is checked below
        torch.onnx.export(
            net.eval(),
            (ids, mask),
            str(path),
            dynamo=False,
            input_names=INPUTS,
            output_names=OUTPUTS,
            dynamic_axes=axes,
            opset_version=opset,
        )


def quantize_all(fp32: Path, out: Path) -> dict[str, Path]:
    """Shape inference + graph optimisation first (as onnxruntime advises), then each int8 variant."""
    prepared = out / "model.fp32.prepared.onnx"
    quant_pre_process(fp32, prepared, skip_symbolic_shape=True)
    variants = {}
    for name, per_channel in tqdm(QUANT.items(), desc="export: int8", leave=False):
        path = out / f"model.{name}.onnx"
        quantize_dynamic(prepared, path, per_channel=per_channel, weight_type=QuantType.QInt8)
        variants[name] = path
    return variants


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(
    sess: ort.InferenceSession, examples: list[dict[str, Any]], batch: int = 64
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Intent logits for all examples and tag logits per example (unpadded), batched by length."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["ids"]))
    intents: list[np.ndarray] = [np.empty(0)] * len(examples)
    tag_rows: list[np.ndarray] = [np.empty(0)] * len(examples)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        ids, mask, _, _ = finetune.collate([examples[i] for i in chunk], 0)
        got_intents, got_tags = sess.run(OUTPUTS, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        for row, i in enumerate(chunk):
            intents[i] = got_intents[row]
            tag_rows[i] = got_tags[row, : len(examples[i]["ids"])]
    return np.stack(intents), tag_rows


@torch.no_grad()
def check_parity(net: model.JointModel, fp32: Path, dev: list[dict[str, Any]]) -> dict[str, float]:
    """fp32 ONNX must reproduce PyTorch on real, padded inputs; a mismatch stops the pipeline."""
    sample = dev[:128]
    onnx_intents, onnx_tags = run_onnx(session(fp32), sample)
    worst_intent = worst_tag = 0.0
    for batch_start in range(0, len(sample), 32):
        batch = sample[batch_start : batch_start + 32]
        ids, mask, _, _ = finetune.collate(batch, 0)
        intents, tag_logits = net(ids, mask)
        diff = np.abs(intents.numpy() - onnx_intents[batch_start : batch_start + len(batch)]).max()
        worst_intent = max(worst_intent, float(diff))
        for row, ex in enumerate(batch):
            got = onnx_tags[batch_start + row]
            worst_tag = max(worst_tag, float(np.abs(tag_logits[row, : len(ex["ids"])].numpy() - got).max()))
    if max(worst_intent, worst_tag) > PARITY_TOLERANCE:
        raise TrainerError(
            f"{fp32}: ONNX differs from PyTorch by {max(worst_intent, worst_tag):.2e} "
            f"(> {PARITY_TOLERANCE}); export is broken"
        )
    return {"max_abs_diff_intent": worst_intent, "max_abs_diff_tags": worst_tag, "examples": len(sample)}


def dev_accuracy(path: Path, dev: list[dict[str, Any]]) -> float:
    """One request at a time, as served: dynamic int8 scales depend on what else is in the batch."""
    logits, _ = run_onnx(session(path), dev, batch=1)
    gold = np.array([ex["intent"] for ex in dev])
    return round(float((logits.argmax(-1) == gold).mean()), 4)


def agreement(fp32: Path, int8: Path, dev: list[dict[str, Any]]) -> dict[str, float]:
    """How far int8 moved from fp32 on dev: same top intent, and the largest logit change."""
    a, _ = run_onnx(session(fp32), dev, batch=1)
    b, _ = run_onnx(session(int8), dev, batch=1)
    return {
        "same_intent": round(float((a.argmax(-1) == b.argmax(-1)).mean()), 4),
        "max_abs_logit_diff": round(float(np.abs(a - b).max()), 4),
    }
