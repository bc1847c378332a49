"""The encoder fine-tuning recipe as plain data (no torch import), so the CLI can offer every knob cheaply.

Why these defaults: mean pooling matches how all-MiniLM-L6-v2 was pretrained; the fresh heads learn
at a higher rate than the encoder and lower layers move less (layer-wise decay), so pretrained
features survive; linear warmup then decay; frozen word embeddings (half the weights) make a CPU
step about a third cheaper (the layer decay would leave them nearly still anyway). Chosen on HWU64
dev (trainer/README.md, "What was tried"): every variant landed within 0.4 pt; this one was best.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EncoderRecipe:
    """Hyperparameters; every field is a CLI option of `finetune` and `build`."""

    epochs: int = 8
    batch_size: int = 32
    lr: float = 2e-4
    head_lr: float = 2e-3
    layer_decay: float = 0.9
    weight_decay: float = 0.01
    warmup: float = 0.06
    label_smoothing: float = 0.0
    tag_weight: float = 1.0
    pooling: str = "mean"
    dropout: float = 0.1
    seed: int = 0
    max_steps: int = 0  # 0 = run all epochs; > 0 caps the number of optimizer steps
    threads: int = 0  # torch CPU threads; 0 = torch's default (one per core); 1 on a box shared with other jobs
    micro_batch: int = 0  # rows per forward pass in each process (0: its whole share); the rest accumulates
    precision: str = "auto"  # auto: bf16 on a GPU that has it, else fp32 ("no"); or no, bf16, fp16
    freeze_word_embeddings: bool = True
    # weight of a supervised contrastive loss on the pooled embeddings (0: none): pulls each intent's
    # texts together and the others apart, which the distance score reads (bench/README.md, Quality)
    contrastive: float = 0.0
    contrastive_temperature: float = 0.1
