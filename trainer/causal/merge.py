"""Stage `causal-merge`: the adapter folded into base weights, saved as a plain Hugging Face folder, and checked.

The adapter was trained against the base as it was loaded: fp32 for LoRA; nf4 (dequantized at each matmul)
for QLoRA. A LoRA adapter is merged into the fp32 base. A QLoRA adapter can be merged into the base in its
original precision or into the dequantized 4-bit base; both are built and compared with the trained model
(the 4-bit base plus the adapter, unmerged) on dev prompts, and the one that agrees better is kept (measured:
trainer/README.md, "QLoRA"). The kept model is saved in the chosen dtype, read back and compared once more:
next-token agreement on the answer positions and the logit distance are reported, and a merge that agrees
less than MIN_AGREEMENT, or moves logits more than MAX_MEAN_LOGIT_DIFF on average, refuses the build.
The base's own tokenizer files are copied unchanged (re-saving a tokenizer can change it), so the converter
reads the very tokenizer training used.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from trainer import records, stage
from trainer.causal import data
from trainer.causal.finetune import ADAPTER, collate, load_base, pad_id
from trainer.errors import TrainerError, UsageError

CPU = torch.device("cpu")  # the merge and its check run on the CPU, wherever training ran
DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
)
CHECK_PROMPTS = 64  # dev examples the merge is checked on
MIN_AGREEMENT = 0.95  # next-token argmax, merged against the trained model, on the answer positions
MAX_MEAN_LOGIT_DIFF = 0.25  # mean |logit difference| there (f16 rounding alone: ~1e-3 of a logit of ~10)


@dataclass(frozen=True)
class Agreement:
    """How a merged model answers against the trained one, on the answer positions of dev prompts."""

    positions: int
    next_token: float  # share of positions with the same argmax
    mean_logit_diff: float
    max_logit_diff: float

    def acceptable(self) -> bool:
        return self.next_token >= MIN_AGREEMENT and self.mean_logit_diff <= MAX_MEAN_LOGIT_DIFF


def run(finetune_dir: Path, out: Path, dtype: str = "float16") -> Path:
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    meta = stage.read(finetune_dir, "causal-finetune")
    base, mode = Path(meta["params"]["base"]), meta["params"].get("mode", "lora")
    rows = _check_rows(Path(meta["inputs"]["train"]["path"]).parent)
    batches = [collate(rows[k : k + 16], pad_id(base)) for k in range(0, len(rows), 16)]
    trained = trained_model(base, finetune_dir / ADAPTER, mode)
    reference = logits_on(trained, batches)
    del trained
    candidates = {"original": lambda: merged_into(fp32_base(base), finetune_dir / ADAPTER)}
    if mode == "qlora":
        candidates["dequantized"] = lambda: merged_into(dequantized_base(base), finetune_dir / ADAPTER)
    chosen, measured, model = _choose(candidates, reference, batches)
    out.mkdir(parents=True, exist_ok=True)
    model.to(DTYPES[dtype]).save_pretrained(out, safe_serialization=True)
    del model
    saved = compare(reference, logits_on(fp32_base(out), batches))
    if not saved.acceptable():
        raise TrainerError(f"causal-merge: the merged model does not answer as the trained one ({_line(saved)})")
    copied = [name for name in TOKENIZER_FILES if (base / name).is_file()]
    for name in copied:
        shutil.copy(base / name, out / name)
    shutil.copy(finetune_dir / data.TASK_FILE, out / data.TASK_FILE)
    stage.write(
        out,
        "causal-merge",
        {"dtype": dtype, "base": str(base), "mode": mode, "into": chosen},
        {"adapter": finetune_dir / ADAPTER},
        {"tokenizer_files": copied, "candidates": measured, "saved": asdict(saved)},
    )
    return out


def _choose(
    candidates: dict[str, Any], reference: list[torch.Tensor], batches: list[dict[str, torch.Tensor]]
) -> tuple[str, dict[str, dict[str, Any]], Any]:
    """Every candidate merge measured; the one that agrees best with the trained model kept (in memory)."""
    best: tuple[str, Agreement, Any] | None = None
    measured: dict[str, dict[str, Any]] = {}
    for name, build in candidates.items():
        model = build()
        agreement = compare(reference, logits_on(model, batches))
        measured[name] = asdict(agreement)
        if best is None or (agreement.next_token, -agreement.mean_logit_diff) > (
            best[1].next_token,
            -best[1].mean_logit_diff,
        ):
            best = (name, agreement, model)
    assert best is not None
    return best[0], measured, best[2]


def _check_rows(data_dir: Path) -> list[dict[str, Any]]:
    dev = records.load_split(data_dir, "dev")
    return dev[:CHECK_PROMPTS]


def fp32_base(folder: Path) -> Any:
    return load_base(folder, "lora", CPU)


def trained_model(base: Path, adapter: Path, mode: str) -> Any:
    """The model as training saw it: the base loaded as causal-finetune loads it (fp32, or nf4 here on the
    CPU), with the adapter."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(base, mode, CPU), adapter)


def dequantized_base(base: Path) -> Any:
    """The fp32 base whose quantized layers hold their nf4 weights, dequantized: what QLoRA trained against."""
    import bitsandbytes.functional as bnbf

    model = fp32_base(base)
    quantized = load_base(base, "qlora", CPU)
    layers = dict(model.named_modules())
    with torch.no_grad():
        for name, module in quantized.named_modules():
            state = getattr(getattr(module, "weight", None), "quant_state", None)
            if state is not None:
                weight = bnbf.dequantize_4bit(module.weight.data, state).to(torch.float32)
                layers[name].weight.copy_(weight.reshape(layers[name].weight.shape))
    return model


def merged_into(model: Any, adapter: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


@torch.no_grad()
def logits_on(model: Any, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """The next-token logits at every answer position of the batches (fp32, on the CPU)."""
    model.eval()
    out = []
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        keep = batch["labels"][:, 1:] != -100  # position t predicts token t + 1
        out.append(logits[:, :-1][keep].cpu())
    return out


def compare(reference: list[torch.Tensor], other: list[torch.Tensor]) -> Agreement:
    ref, got = torch.cat(reference), torch.cat(other)
    diff = (ref - got).abs()
    return Agreement(
        positions=len(ref),
        next_token=round(float((ref.argmax(-1) == got.argmax(-1)).float().mean()), 4) if len(ref) else 1.0,
        mean_logit_diff=round(float(diff.mean()), 5) if len(ref) else 0.0,
        max_logit_diff=round(float(diff.max()), 5) if len(ref) else 0.0,
    )


def _line(a: Agreement) -> str:
    return (
        f"next-token agreement {a.next_token:.1%} (at least {MIN_AGREEMENT:.0%}), mean logit difference "
        f"{a.mean_logit_diff:.3g} (at most {MAX_MEAN_LOGIT_DIFF:g}), over {a.positions} answer positions"
    )
