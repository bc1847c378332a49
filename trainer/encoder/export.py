"""Stage `export`: the joint model -> ONNX fp32 (checked against PyTorch) -> int8 (checked against fp32).

torch.onnx (TorchScript exporter, `dynamo=False`) rather than optimum: optimum-onnx pins
transformers<4.58, which conflicts with the transformers 5 that our default base requires. int8 comes
from onnxruntime's quantizers, each per-tensor and per-channel: static (QDQ, activation scales fixed
by calibration on dev, so an answer does not depend on the rest of its batch) and dynamic (scales
taken from each call's whole batch, so the device must send one request per pass). The best static
variant is served unless it is clearly less accurate on dev than the best dynamic one (`choose`).

Output folder: `model.onnx` (the chosen int8), `model.fp32.onnx`, the int8 candidates, labels and
tokenizer copied from the model folder, `stage.json` with the checks' numbers. `build_manifest`
describes such files as the agent's ONNX runtime reads them (for evaluate, then publish).
"""

from __future__ import annotations

import shutil
import sys
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from tokenizers import Tokenizer
from tqdm import tqdm

from edge_agent.contract import manifest as mf
from trainer import artifact, records, stage
from trainer.encoder import base as encoder_base
from trainer.encoder import data, finetune, model
from trainer.errors import TrainerError

INPUTS = ["input_ids", "attention_mask"]
EMBEDDING = "pooled"  # the sentence embedding the intent head reads; the distance score's input
OUTPUTS = ["intent_logits", "tag_logits", EMBEDDING]
FP32 = "model.fp32.onnx"
MODEL = "model.onnx"
Kind = Literal["static", "dynamic"]
# name -> (kind, per_channel); the dynamic names are those of artifacts built before static int8 existed
QUANT: dict[str, tuple[Kind, bool]] = {
    "int8-static": ("static", False),
    "int8-static-per-channel": ("static", True),
    "int8-dynamic": ("dynamic", False),
    "int8-per-channel": ("dynamic", True),
}
PARITY_TOLERANCE = 1e-3
# A static model answers each text as it would alone, whatever else is in its batch: the agent may
# batch requests (throughput on a busy device) and an answer is reproducible. That is worth a little
# accuracy, not much: 0.5 pt is about the spread between recipe variants on HWU64 dev (README, "What
# was tried"), i.e. dev noise. Measured on hwu64-iot with all-MiniLM-L6-v2, static and dynamic tie.
STATIC_TOLERANCE = 0.005
# Alone vs inside a padded batch, a static variant's intent logits must agree to this (measured: 0.0).
BATCH_TOLERANCE = 1e-4
DEV_BATCH = 64
# Static quantization's reach, chosen by measurement (hwu64-iot, MiniLM; tiny model in tests):
# - only MatMul/Gemm/Gather: onnxruntime's default also quantizes the attention mask's Add/Mul/Where,
#   whose range, calibrated on unpadded inputs, cannot hold the mask's large negatives: in a padded
#   batch padding leaks into attention and answers depend on the batch again (confidence moved 0.04);
# - MatMuls with a weight only: attention scores and probabilities stay float, as with dynamic int8
#   (same dev accuracy and speed either way, fewer Q/DQ nodes);
# - MatMul/Gemm outputs not re-quantized: otherwise the logits themselves go through 8 bits of the
#   calibrated range (clipped outside it); float outputs cut the mean confidence change against fp32
#   from 0.0018 to 0.0007, as close as dynamic int8 comes;
# - uint8 activations, int8 weights: int8 activations gave the same accuracy but ran 6x slower on
#   onnxruntime's x86 CPU kernels; u8/s8 is also what dynamic int8 (today's fleet) runs.
STATIC_OPS = ["MatMul", "Gemm", "Gather"]
STATIC_OPTIONS = {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}
CALIBRATION_EXAMPLES = 512  # spread over dev; a cap keeps export quick on a large dev split
CALIBRATION_BATCH = 16


def run(model_dir: Path, data_dir: Path, out: Path, opset: int = 17) -> Path:
    """Export, quantize, check; the int8 variant `choose` picks becomes model.onnx."""
    meta = stage.read(model_dir, "finetune")
    data_meta = stage.read(data_dir, "data")
    dev = records.load_split(data_dir, "dev")
    net = model.load(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    to_onnx(net, out / FP32, opset)
    parity = check_parity(net, out / FP32, dev)
    calibration = calibration_sample(dev)
    variants = quantize_all(out / FP32, out, calibration)
    kinds: dict[str, str] = {"fp32": "none", **{name: QUANT[name][0] for name in variants}}
    alone, batched = {}, {}
    for name, path in tqdm([("fp32", out / FP32), *variants.items()], desc="export: dev accuracy", leave=False):
        sess = session(path)
        alone[name] = run_onnx(sess, dev, batch=1)[0]
        batched[name] = run_onnx(sess, dev, batch=DEV_BATCH)[0]
    # static (and float) in batches, as they may be served; dynamic one request at a time, as it must be
    scores = {name: accuracy(alone[name] if kinds[name] == "dynamic" else batched[name], dev) for name in kinds}
    batch_diff = {name: round(float(np.abs(alone[name] - batched[name]).max()), 6) for name in kinds}
    chosen = choose(variants, kinds, scores, batch_diff)
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
            "static": {
                "format": "QDQ",
                "activations": "uint8",
                "weights": "int8",
                "op_types": STATIC_OPS,
                "weight_matmuls_only": True,
                "extra_options": STATIC_OPTIONS,
                "calibration": {"method": "MinMax", "examples": len(calibration), "source": "dev"},
                "tolerance_vs_dynamic": STATIC_TOLERANCE,
            },
        },
        {"weights": model_dir / model.WEIGHTS, "dev": data_dir / "dev.jsonl"},
        {
            "parity_fp32_vs_torch": parity,
            "dev_intent_acc": scores,
            "kinds": kinds,
            "batch_max_abs_logit_diff": batch_diff,
            "chosen": chosen,
            "quantization": kinds[chosen],
            "int8_agreement_with_fp32": agreement(alone["fp32"], alone[chosen]),
            "sizes": {p.name: p.stat().st_size for p in out.glob("*.onnx")},
        },
    )
    return out


def choose(
    variants: dict[str, Path], kinds: dict[str, str], scores: dict[str, float], batch_diff: dict[str, float]
) -> str:
    """The best static variant (dev accuracy, then size) unless the best dynamic one beats it by more than
    STATIC_TOLERANCE; a static variant that is not batch independent after all is never served."""

    def best(names: list[str]) -> str | None:
        return max(names, key=lambda name: (scores[name], -variants[name].stat().st_size), default=None)

    static = [name for name in variants if kinds[name] == "static"]
    for name in static:
        if batch_diff[name] > BATCH_TOLERANCE:
            print(
                f"warning: export: {name} answers differ alone and in a batch by {batch_diff[name]:.2e}; not served",
                file=sys.stderr,
            )
    best_static = best([name for name in static if batch_diff[name] <= BATCH_TOLERANCE])
    best_dynamic = best([name for name in variants if kinds[name] == "dynamic"])
    if best_static is None or best_dynamic is None:
        chosen = best_static or best_dynamic
        if chosen is None:
            raise TrainerError("export: no int8 variant to serve")
        return chosen
    if scores[best_static] >= scores[best_dynamic] - STATIC_TOLERANCE - 1e-9:  # scores are rounded to 4 digits
        return best_static
    return best_dynamic


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
            embedding=EMBEDDING if EMBEDDING in export_meta["params"]["outputs"] else None,
            # export folders from before static int8 hold only dynamic variants
            quantization=export_meta["results"].get("quantization", "dynamic"),
        ),
        ood=_ood(calibration.get("ood")),
        base_model=export_meta["params"]["base_model"],
        data=export_meta["params"]["data"],
    )


def _ood(rule: dict[str, Any] | None) -> mf.Ood | None:
    """The manifest's distance section from the evaluate stage's choice (none before it has run)."""
    if not rule:
        return None
    return mf.Ood(file=rule["file"], rule=rule["rule"], threshold=rule["threshold"], dev=rule["dev"])


def to_onnx(net: model.JointModel, path: Path, opset: int) -> None:
    """Trace with a padded batch of two so batch and sequence axes stay dynamic."""
    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2000, 102, 0]])
    mask = (ids != 0).long()
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "intent_logits": {0: "batch"},
        "tag_logits": {0: "batch", 1: "sequence"},
        EMBEDDING: {0: "batch"},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about python branches; parity is checked below
        torch.onnx.export(
            model.Exported(net).eval(),
            (ids, mask),
            str(path),
            dynamo=False,
            input_names=INPUTS,
            output_names=OUTPUTS,
            dynamic_axes=axes,
            opset_version=opset,
        )


def quantize_all(fp32: Path, out: Path, calibration: list[dict[str, Any]]) -> dict[str, Path]:
    """Shape inference + graph optimisation first (as onnxruntime advises), then each int8 variant;
    the static ones calibrated on `calibration` (dev examples)."""
    prepared = out / "model.fp32.prepared.onnx"
    quant_pre_process(fp32, prepared, skip_symbolic_shape=True)
    graph = onnx.load(str(prepared)).graph
    weights = {init.name for init in graph.initializer}
    # attention's two MatMuls multiply activations by activations: left float (see STATIC_OPS)
    activation_matmuls = [
        n.name for n in graph.node if n.op_type == "MatMul" and n.name and not weights.intersection(n.input)
    ]
    # the intent head reads the pooled embedding, which is also an output (the distance score's input):
    # static QDQ on the head's input would turn that output into an 8-bit copy, so the head stays float
    head = [n.name for n in graph.node if n.name and EMBEDDING in n.input]
    variants = {}
    for name, (kind, per_channel) in tqdm(QUANT.items(), desc="export: int8", leave=False):
        path = out / f"model.{name}.onnx"
        if kind == "dynamic":
            quantize_dynamic(prepared, path, per_channel=per_channel, weight_type=QuantType.QInt8)
        else:  # each calibrates on the same examples (MinMax: the same ranges), weights differ
            quantize_static(
                prepared,
                path,
                DevReader(calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=STATIC_OPS,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=activation_matmuls + head,
                extra_options=dict(STATIC_OPTIONS),
            )
        variants[name] = path
    return variants


def calibration_sample(dev: list[dict[str, Any]], limit: int = CALIBRATION_EXAMPLES) -> list[dict[str, Any]]:
    """Up to `limit` dev examples spread evenly over the file (dev files are often grouped by intent)."""
    if len(dev) <= limit:
        return list(dev)
    return [dev[i * len(dev) // limit] for i in range(limit)]


class DevReader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
    """Calibration inputs as `run_onnx` builds them (int64 `input_ids`, `attention_mask`), in batches of
    examples of the same length: no padding, so the ranges are those of real tokens only, exactly as
    one example at a time would give them, in fewer runs."""

    def __init__(self, examples: list[dict[str, Any]], batch: int = CALIBRATION_BATCH) -> None:
        by_length: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ex in examples:
            by_length[len(ex["ids"])].append(ex)
        self.feeds = []
        for _, group in sorted(by_length.items()):
            for start in range(0, len(group), batch):
                ids, mask, _, _ = finetune.collate(group[start : start + batch], 0)
                self.feeds.append({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:
        self._feeds = iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)


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
        got_intents, got_tags = sess.run(OUTPUTS[:2], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
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


def accuracy(logits: np.ndarray, dev: list[dict[str, Any]]) -> float:
    """Intent accuracy of `run_onnx` logits. Dynamic int8 must be run one request at a time, as it is
    served (its activation scales come from the whole batch); static int8 and fp32 may be batched."""
    gold = np.array([ex["intent"] for ex in dev])
    return round(float((logits.argmax(-1) == gold).mean()), 4)


def agreement(fp32: np.ndarray, int8: np.ndarray) -> dict[str, float]:
    """How far int8 moved from fp32 on dev (intent logits, one request at a time): same top intent,
    and the largest logit change."""
    return {
        "same_intent": round(float((fp32.argmax(-1) == int8.argmax(-1)).mean()), 4),
        "max_abs_logit_diff": round(float(np.abs(fp32 - int8).max()), 4),
    }
