"""Stage `causal-merge`: the adapter folded into the base weights, saved as a plain Hugging Face folder.

The base is loaded unquantized (also after QLoRA: merging into 4-bit weights would round the
update away), the adapter merged with `merge_and_unload`, the result saved as safetensors in the
chosen dtype with the base's own tokenizer files copied unchanged (re-saving a tokenizer can change
it), so the converter reads the very tokenizer training used.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from trainer import stage
from trainer.causal import data
from trainer.causal.finetune import ADAPTER
from trainer.errors import UsageError

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


def run(finetune_dir: Path, out: Path, dtype: str = "float16") -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    meta = stage.read(finetune_dir, "causal-finetune")
    base = Path(meta["params"]["base"])
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, finetune_dir / ADAPTER).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.to(DTYPES[dtype]).save_pretrained(out, safe_serialization=True)
    copied = [name for name in TOKENIZER_FILES if (base / name).is_file()]
    for name in copied:
        shutil.copy(base / name, out / name)
    shutil.copy(finetune_dir / data.TASK_FILE, out / data.TASK_FILE)
    stage.write(
        out,
        "causal-merge",
        {"dtype": dtype, "base": str(base)},
        {"adapter": finetune_dir / ADAPTER},
        {"tokenizer_files": copied},
    )
    return out
