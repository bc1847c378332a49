"""The causal fine-tuning recipe as plain data (no torch import), so the CLI can offer every knob cheaply.

Why these defaults: LoRA on every linear layer (the QLoRA paper's finding: all layers beat attention
only), rank 16 / alpha 32, a constant-after-warmup rate with linear decay, loss on answer tokens only.
`train_embeddings` also trains the embeddings and the LM head in full: needed when the base was made
from a config (random weights), wasteful for a real pretrained base.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CausalRecipe:
    """Hyperparameters; every field is a CLI option of `causal-finetune` and `build-causal`."""

    epochs: int = 3
    batch_size: int = 16
    lr: float = 2e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str = "all-linear"  # or a comma list such as q_proj,v_proj
    top_layers: int = 0  # LoRA on the top N transformer layers only (0: all): backward stops below them
    train_embeddings: bool = False
    warmup: float = 0.03
    weight_decay: float = 0.0
    max_steps: int = 0  # 0 = run all epochs; > 0 caps the number of optimizer steps
    seed: int = 0
    qlora: str = "auto"  # auto: QLoRA on a GPU with bitsandbytes, else LoRA; on: QLoRA (CPU or GPU) or fail; off: LoRA
    micro_batch: int = 0  # rows per forward pass in each process (0: its whole share); the rest accumulates
    precision: str = "auto"  # auto: bf16 on a GPU that has it, else fp32 ("no"); or no, bf16, fp16
    checkpoint_every: int = 200  # optimizer steps between resumable checkpoints
    threads: int = 0  # torch CPU threads; 0 = torch's default (all cores: slow when others share them)
