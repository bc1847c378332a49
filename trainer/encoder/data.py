"""Stage `data`: labelled JSONL -> label maps + token ids and BIO tags, with the serving tokenizer.

Output folder: `labels.json`, `tokenizer.json` (as the agent will load it), `train.jsonl` and
`dev.jsonl` of encoded examples, `stage.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from trainer import records, stage
from trainer.encoder import base as encoder_base
from trainer.encoder import tags
from trainer.errors import UsageError
from trainer.records import Record

LABELS = "labels.json"


@dataclass(frozen=True)
class Labels:
    """Label maps; list order is the column order of the model's heads."""

    intents: list[str]
    entity_types: list[str]
    tags: list[str]
    max_tokens: int

    def save(self, folder: Path) -> None:
        (folder / LABELS).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Labels:
        return cls(**json.loads((folder / LABELS).read_text()))


def run(train: Path, dev: Path, out: Path, base: Path | None = None, max_tokens: int = 64) -> Path:
    """Validate both files, build label maps from train, encode both splits."""
    base = encoder_base.resolve(base)
    train_recs, dev_recs = records.read(train), records.read(dev)
    labels = label_maps(train_recs, max_tokens)
    records.check_known(dev, dev_recs, set(labels.intents), set(labels.entity_types), train)
    tokenizer = encoder_base.load_tokenizer(base)
    out.mkdir(parents=True, exist_ok=True)
    labels.save(out)
    tokenizer.save(str(out / encoder_base.TOKENIZER))
    counts = {
        name: records.write_split(
            out / f"{name}.jsonl", (encode(r, tokenizer, labels) for r in recs), _ids, labels.max_tokens
        )
        for name, recs in (("train", train_recs), ("dev", dev_recs))
    }
    stage.write(
        out,
        "data",
        {"max_tokens": max_tokens, "base": str(base)},
        {"train": train, "dev": dev},
        {"counts": counts, "labels": len(labels.intents), "entity_types": len(labels.entity_types)},
    )
    return out


def label_maps(recs: list[Record], max_tokens: int) -> Labels:
    """Sorted names, so the same data always gives the same columns."""
    types = sorted({e.type for r in recs for e in r.entities})
    return Labels(
        intents=sorted({r.intent for r in recs}), entity_types=types, tags=tags.tag_set(types), max_tokens=max_tokens
    )


def encode(rec: Record, tokenizer: Tokenizer, labels: Labels) -> dict[str, Any]:
    enc = tokenizer.encode(rec.text, add_special_tokens=True)
    tag_ids = tags.align(enc.offsets, enc.special_tokens_mask, rec.entities, labels.tags)
    return {"ids": enc.ids, "tags": tag_ids, "intent": labels.intents.index(rec.intent), "text": rec.text}


def _ids(example: dict[str, Any]) -> int:
    """An encoded example's length as the model sees it: every token, special ones included."""
    return len(example["ids"])


def check_unseen(train: Path, unseen: Path) -> None:
    """Before any training: `unseen` (for choosing the escalation rule) must hold only intents that
    `train` lacks, or it would measure nothing."""
    trained = {r.intent for r in records.read(train)}
    overlap = sorted({r.intent for r in records.read(unseen)} & trained)
    if overlap:
        raise UsageError(f"--unseen {unseen}: holds intents the training data has: {', '.join(overlap[:5])}")
