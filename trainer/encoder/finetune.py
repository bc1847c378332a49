"""Stage `finetune`: train one encoder with two heads (intent, BIO tags) jointly on the encoded data.

The recipe is in `recipe.py`. Batches are grouped by length so padding costs little on a CPU.
"""

from __future__ import annotations

import random
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from trainer import records, stage
from trainer.encoder import base as encoder_base
from trainer.encoder import data, model
from trainer.encoder.data import Labels
from trainer.encoder.recipe import EncoderRecipe
from trainer.engine import Engine, barrier, is_main_process
from trainer.errors import TrainerError

IGNORE = -100


def run(
    data_dir: Path,
    out: Path,
    base: Path | None = None,
    recipe: EncoderRecipe | None = None,
    init: Path | None = None,
) -> Path:
    """Fine-tune `base` on `data_dir` (output of `data`) and save the joint model into `out`; with
    `init` (an earlier finetune folder), start from that model instead (a warm start)."""
    recipe = recipe or EncoderRecipe()
    base = encoder_base.resolve(base)
    stage.read(data_dir, "data")
    labels = Labels.load(data_dir)
    train, dev = records.load_split(data_dir, "train"), records.load_split(data_dir, "dev")
    _seed(recipe.seed)
    _threads(recipe.threads)
    if init is not None:
        net = warm_start(init, labels, recipe)
    else:
        net = model.from_base(
            base,
            len(labels.intents),
            len(labels.tags),
            pooling=recipe.pooling,
            dropout=recipe.dropout,
        )
    if recipe.freeze_word_embeddings:
        net.encoder.get_input_embeddings().weight.requires_grad_(False)
    pooler = getattr(net.encoder, "pooler", None)
    if pooler is not None:  # BERT's pooler is never read (the heads pool themselves): DDP wants no idle weights
        pooler.requires_grad_(False)
    started = time.monotonic()
    history = _train(net, train, dev, recipe)
    if not is_main_process():
        barrier()  # the main process writes the model; the others wait for it
        return out
    model.save(net, out)
    for name in (data.LABELS, encoder_base.TOKENIZER):
        shutil.copy(data_dir / name, out / name)
    stage.write(
        out,
        "finetune",
        {
            "recipe": asdict(recipe),
            "base": str(base),
            "base_model": encoder_base.describe(base),
            **({"init": str(init)} if init else {}),
        },
        {"data": data_dir / "train.jsonl"},
        {"history": history, "seconds": round(time.monotonic() - started, 1)},
    )
    barrier()
    return out


def warm_start(init: Path, labels: Labels, recipe: EncoderRecipe) -> model.JointModel:
    """The model of an earlier finetune stage, its heads re-laid for `labels`: a label (or tag) it had
    keeps its row, a new one starts fresh. The encoder keeps everything it learnt."""
    net = model.load(init, attention="sdpa")
    before = Labels.load(init)
    if before.tags != labels.tags and set(before.tags) - set(labels.tags):
        raise TrainerError(f"{init}: its entity types are not all in the new data; warm start keeps every tag")
    net.intent_head = _relaid(net.intent_head, before.intents, labels.intents)
    net.tag_head = _relaid(net.tag_head, before.tags, labels.tags)
    net.dropout.p = recipe.dropout
    return net


@torch.no_grad()
def _relaid(head: nn.Linear, before: list[str], after: list[str]) -> nn.Linear:
    fresh = nn.Linear(head.in_features, len(after))
    for row, name in enumerate(after):
        if name in before:
            fresh.weight[row] = head.weight[before.index(name)]
            fresh.bias[row] = head.bias[before.index(name)]
    return fresh


def _threads(threads: int) -> None:
    """Fewer threads than cores can be much faster on a shared box: a preempted worker stalls the rest."""
    if threads > 0:
        torch.set_num_threads(threads)


def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _train(
    net: model.JointModel, train: list[dict[str, Any]], dev: list[dict[str, Any]], recipe: EncoderRecipe
) -> list[dict[str, float]]:
    """The loop on the Accelerate engine: every process walks the same length-grouped batches (the seed
    decides them) and trains on its share; the main process scores dev after each epoch."""
    engine = Engine(recipe.micro_batch, recipe.precision)
    pad = int(getattr(net.encoder.config, "pad_token_id", 0) or 0)
    per_epoch = (len(train) + recipe.batch_size - 1) // recipe.batch_size
    total = recipe.max_steps or per_epoch * recipe.epochs
    optimizer = torch.optim.AdamW(param_groups(net, recipe), fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear(total, int(total * recipe.warmup)))
    trained = engine.prepare(model.Exported(net))  # forward gives all three outputs, as DDP needs
    history, step, epoch = [], 0, 0
    while step < total:
        epoch += 1
        trained.train()
        bar = tqdm(
            batches(train, recipe.batch_size, shuffle=True),
            desc=f"finetune epoch {epoch}",
            total=per_epoch,
            leave=False,
            unit="batch",
            disable=not engine.is_main,
        )
        for batch in bar:
            loss = engine.accumulate(trained, batch, _loss(trained, batch, recipe, pad, engine.device))
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            bar.set_postfix(loss=f"{loss:.3f}")
            if step >= total:
                break
        if engine.is_main:
            history.append({"epoch": epoch, "step": step, "loss": round(loss, 4), **dev_scores(net, dev, pad)})
            tqdm.write(f"finetune: epoch {epoch} step {step}: {history[-1]}", file=sys.stderr)
        engine.barrier()
    return history


def _loss(
    trained: Any, batch: list[dict[str, Any]], recipe: EncoderRecipe, pad: int, device: torch.device
) -> Callable[[list[dict[str, Any]]], torch.Tensor]:
    """A share's loss over the whole batch's counts (rows for the intent, tagged tokens for the tags), so the
    processes' sum is the one-process loss. The contrastive term (off by default) sees its own share only."""
    rows = len(batch)
    tokens = max(1, sum(1 for ex in batch for tag in ex["tags"] if tag != IGNORE))
    intent_loss = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing, reduction="sum")
    tag_loss = nn.CrossEntropyLoss(ignore_index=IGNORE, reduction="sum")

    def loss_of(share: list[dict[str, Any]]) -> torch.Tensor:
        ids, mask, intents, tag_ids = (x.to(device) for x in collate(share, pad))
        intent_logits, tag_logits, pooled = trained(ids, mask)  # the DDP-wrapped Exported: untyped
        loss: torch.Tensor = intent_loss(intent_logits, intents) / rows
        loss = loss + recipe.tag_weight * tag_loss(tag_logits.flatten(0, 1), tag_ids.flatten()) / tokens
        if recipe.contrastive > 0:
            contrast = supervised_contrastive(pooled, intents, recipe.contrastive_temperature)
            loss = loss + recipe.contrastive * contrast * len(share) / rows
        return loss

    return loss_of


def supervised_contrastive(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) over the batch: each text's same-intent neighbours against all others,
    on unit vectors. Texts without a same-intent neighbour in the batch add nothing."""
    z = nn.functional.normalize(embeddings, dim=-1)
    sims = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sims = sims.masked_fill(self_mask, float("-inf"))
    log_prob = sims - torch.logsumexp(sims, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positive.sum(1)
    has = counts > 0
    if not has.any():
        return embeddings.sum() * 0.0
    mean_log_prob = log_prob.masked_fill(~positive, 0.0).sum(1)[has] / counts[has]
    return -mean_log_prob.mean()


def param_groups(net: model.JointModel, recipe: EncoderRecipe) -> list[dict[str, Any]]:
    """Heads at `head_lr`; encoder layer l at lr * decay^(top - l), embeddings lowest.

    Biases and LayerNorm weights get no weight decay (the usual BERT practice).
    """
    top = int(net.encoder.config.num_hidden_layers) + 1
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        if not name.startswith("encoder."):
            rate = recipe.head_lr
        else:
            rate = recipe.lr * recipe.layer_decay ** (top - _depth(name, top))
        decay = 0.0 if param.ndim == 1 else recipe.weight_decay
        groups.setdefault((rate, decay), []).append(param)
    return [{"params": params, "lr": rate, "weight_decay": decay} for (rate, decay), params in groups.items()]


def _depth(name: str, top: int) -> int:
    """0 for embeddings, i + 1 for transformer layer i, `top` for anything above the layers."""
    if ".embeddings." in name:
        return 0
    found = re.search(r"\.layers?\.(\d+)\.", name)
    return int(found.group(1)) + 1 if found else top


def _linear(total: int, warmup: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def batches(examples: list[dict[str, Any]], size: int, shuffle: bool) -> list[list[dict[str, Any]]]:
    """Length-grouped batches: shuffled pools of 50 batches, sorted by length inside each pool."""
    order = list(range(len(examples)))
    if shuffle:
        random.shuffle(order)
    pool = size * 50
    out: list[list[dict[str, Any]]] = []
    for i in range(0, len(order), pool):
        chunk = sorted(order[i : i + pool], key=lambda j: len(examples[j]["ids"]))
        out.extend([examples[j] for j in chunk[k : k + size]] for k in range(0, len(chunk), size))
    if shuffle:
        random.shuffle(out)
    return out


def collate(batch: list[dict[str, Any]], pad: int) -> tuple[torch.Tensor, ...]:
    """Pad to the longest in the batch; padded tag positions are ignored by the loss."""
    width = max(len(ex["ids"]) for ex in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    tag_ids = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex["ids"])
        ids[row, :n] = torch.tensor(ex["ids"])
        mask[row, :n] = 1
        tag_ids[row, :n] = torch.tensor(ex["tags"])
    intents = torch.tensor([ex["intent"] for ex in batch], dtype=torch.long)
    return ids, mask, intents, tag_ids


@torch.no_grad()
def dev_scores(net: model.JointModel, dev: list[dict[str, Any]], pad: int) -> dict[str, float]:
    """Intent accuracy and token tag accuracy on dev, in PyTorch (a quick signal per epoch)."""
    net.eval()
    right = tags_right = tags_total = 0
    for batch in batches(dev, 64, shuffle=False):
        ids, mask, intents, tag_ids = collate(batch, pad)
        intent_logits, tag_logits = net(ids, mask)
        right += int((intent_logits.argmax(-1) == intents).sum())
        keep = tag_ids != IGNORE
        tags_right += int((tag_logits.argmax(-1) == tag_ids)[keep].sum())
        tags_total += int(keep.sum())
    return {
        "dev_intent_acc": round(right / max(1, len(dev)), 4),
        "dev_tag_acc": round(tags_right / max(1, tags_total), 4),
    }
