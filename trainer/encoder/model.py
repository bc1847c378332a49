"""One encoder, two heads: intent logits from the pooled sentence, BIO tag logits per token.

Saved as a plain folder: the encoder's `config.json`, `heads.json` (sizes, pooling) and
`model.safetensors` (all weights), so export can rebuild it without the base folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

HEADS = "heads.json"
WEIGHTS = "model.safetensors"


class JointModel(nn.Module):
    """Encoder + intent head (pooled) + tag head (per token); returns raw logits."""

    def __init__(
        self,
        encoder: PreTrainedModel,
        n_labels: int,
        n_tags: int,
        pooling: str = "mean",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.intent_head = nn.Linear(hidden, n_labels)
        self.tag_head = nn.Linear(hidden, n_tags)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        intents, tags, _ = self.outputs(input_ids, attention_mask)
        return intents, tags

    def outputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Intent logits, tag logits and the pooled sentence embedding the intent head reads."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = self._pool(states, attention_mask)
        return self.intent_head(self.dropout(pooled)), self.tag_head(self.dropout(states)), pooled

    def _pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return states[:, 0]
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def heads_config(self) -> dict[str, Any]:
        return {
            "n_labels": self.intent_head.out_features,
            "n_tags": self.tag_head.out_features,
            "pooling": self.pooling,
        }


def from_base(base: Path, n_labels: int, n_tags: int, **heads: Any) -> JointModel:
    """Pretrained encoder weights from a local HF folder, fresh heads (`heads`: JointModel's options)."""
    encoder = AutoModel.from_pretrained(base, attn_implementation="sdpa")
    return JointModel(encoder, n_labels, n_tags, **heads)


class Exported(nn.Module):
    """The graph a device runs: the joint model's three outputs (ONNX export traces `forward`)."""

    def __init__(self, net: JointModel) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net.outputs(input_ids, attention_mask)


def save(model: JointModel, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.encoder.config.save_pretrained(folder)
    (folder / HEADS).write_text(json.dumps(model.heads_config(), indent=2) + "\n")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))


def load(folder: Path, attention: str = "eager") -> JointModel:
    """Rebuild from a saved folder (eager attention by default: it traces to plain ONNX ops)."""
    config = AutoConfig.from_pretrained(folder)
    encoder = AutoModel.from_config(config, attn_implementation=attention)  # type: ignore[no-untyped-call]
    heads = json.loads((folder / HEADS).read_text())
    model = JointModel(encoder, **heads)
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.eval()
