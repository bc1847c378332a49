"""Stage `causal-finetune`: LoRA or QLoRA (bitsandbytes nf4 + double quantization, on a CPU or a GPU) on any causal
LM folder, on the Accelerate engine (trainer/engine.py): one process, or N under `accelerate launch`.

Loss is on the answer tokens only: the prompt positions are masked with -100. Checkpoints every
`checkpoint_every` steps (adapter, optimizer, schedule, step); a rerun into the same folder resumes
from the latest one, in the same data order, whatever the number of processes that wrote it. Output folder:
`adapter/` (peft), `task.json`, `stage.json`.
"""

from __future__ import annotations

import importlib.util
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from trainer import records, stage
from trainer.causal import data
from trainer.causal.recipe import CausalRecipe
from trainer.engine import Engine
from trainer.errors import TrainerError, UsageError

IGNORE = -100
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"


def run(data_dir: Path, out: Path, recipe: CausalRecipe | None = None, base: Path | None = None) -> Path:
    """Fine-tune the base of `data_dir` (or `base`) on its examples; resumes from out/checkpoints."""
    recipe = recipe or CausalRecipe()
    stage.read(data_dir, "causal-data")
    spec = data.TaskSpec.load(data_dir)
    base = base or Path(spec.base)
    train, dev = records.load_split(data_dir, "train"), records.load_split(data_dir, "dev")
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    if recipe.threads > 0:
        torch.set_num_threads(recipe.threads)
    engine = Engine(recipe.micro_batch, recipe.precision)
    mode = choose_mode(recipe.qlora, announce=engine.is_main)
    model = with_lora(load_base(base, mode, engine.device), recipe, mode)
    trainer = Trainer(model, recipe, train, dev, out / CHECKPOINTS, pad_id(base), identity(recipe, spec, base), engine)
    history = trainer.fit()
    if engine.is_main:
        engine.unwrap(trainer.model).save_pretrained(out / ADAPTER)
        shutil.copy(data_dir / data.TASK_FILE, out / data.TASK_FILE)
        params = {"recipe": asdict(recipe), "mode": mode, "base": str(base)}
        engine_facts = {"processes": engine.world, "precision": engine.precision}
        stage.write(
            out,
            "causal-finetune",
            {**params, "engine": engine_facts},
            {"train": data_dir / "train.jsonl"},
            {"history": history, "seconds": round(trainer.elapsed(), 1)},
        )
    engine.barrier()  # the others go on (or stop) once the adapter is on disk
    return out


def identity(recipe: CausalRecipe, spec: data.TaskSpec, base: Path) -> dict[str, Any]:
    """What decides the batches and the weights: a checkpoint made under another of these is not resumed.
    Threads and checkpoint spacing may change between runs, and so may the length (epochs, max_steps):
    training on from a checkpoint is what a rerun is for."""
    free = ("threads", "checkpoint_every", "epochs", "max_steps", "micro_batch")
    kept = {k: v for k, v in asdict(recipe).items() if k not in free}
    sums = {split: info.get("sha256") for split, info in spec.data.items()}
    return {"recipe": kept, "data": sums, "base": str(base), "task": spec.task}


def choose_mode(qlora: str, announce: bool = True) -> str:
    """`on`: QLoRA wherever bitsandbytes is installed (CPU or GPU), else one clear error. `auto`: QLoRA where it
    pays, on a GPU (the 4-bit base frees memory for batch and length); LoRA on a CPU, where QLoRA is no faster
    (4.45 against 4.5 s a step, shared/measurements.md), a build box has the memory, and the fp32 base
    leaves no 4-bit rounding for the merge to settle. `off`: LoRA."""
    if qlora not in ("auto", "on", "off"):
        raise UsageError(f"--qlora {qlora!r}: use auto, on or off")
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    if qlora == "on" and not has_bnb:
        raise TrainerError("--qlora on needs bitsandbytes: pip install 'edge-agent[trainer,qlora]' (or --qlora off)")
    cuda = torch.cuda.is_available()
    mode = "qlora" if qlora == "on" or (qlora == "auto" and cuda and has_bnb) else "lora"
    if announce and qlora == "auto":
        why = {
            (True, True): "QLoRA: a GPU and bitsandbytes (nf4 + double quantization)",
            (True, False): "LoRA: bitsandbytes is not installed (pip install 'edge-agent[qlora]' for QLoRA)",
        }.get((cuda, has_bnb), "LoRA: no GPU (QLoRA is no faster on a CPU; --qlora on to use it anyway)")
        print(f"causal-finetune: {why}", file=sys.stderr)
    return mode


def compute_dtype(device: torch.device) -> torch.dtype:
    """What 4-bit weights are dequantized to for each matmul: bf16 on a GPU, fp32 on a CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_base(base: Path, mode: str, device: torch.device) -> Any:
    """The base in fp32 (LoRA), or in nf4 with double quantization (QLoRA) on `device`."""
    from transformers import AutoModelForCausalLM

    if mode == "lora":
        model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        return model
    from peft import prepare_model_for_kbit_training

    place = device.index if device.type == "cuda" else "cpu"
    quantized = AutoModelForCausalLM.from_pretrained(
        base, quantization_config=nf4_config(device), device_map={"": place}, dtype=compute_dtype(device)
    )
    return prepare_model_for_kbit_training(quantized, use_gradient_checkpointing=False)


def nf4_config(device: torch.device) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(device),
    )


def with_lora(model: Any, recipe: CausalRecipe, mode: str) -> Any:
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = recipe.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in recipe.target_modules.split(",") if t.strip()]
    elif recipe.top_layers:  # peft takes a layer range with named modules only: every linear layer's name
        targets = linear_names(model)
    layers = int(model.config.num_hidden_layers)
    if not 0 <= recipe.top_layers <= layers:
        raise UsageError(f"--top-layers {recipe.top_layers}: the base has {layers} layers")
    config = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=targets,
        layers_to_transform=list(range(layers - recipe.top_layers, layers)) if recipe.top_layers else None,
        modules_to_save=["embed_tokens", "lm_head"] if recipe.train_embeddings else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def linear_names(model: Any) -> list[str]:
    """The names of the linear layers inside the transformer blocks (4-bit ones too), the LM head left out."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if ".layers." in name and isinstance(module, torch.nn.Linear)  # bitsandbytes' Linear4bit is one too
    }
    return sorted(names)


def pad_id(base: Path) -> int:
    tokenizer = data.load_tokenizer(base)
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0


def collate(batch: list[dict[str, Any]], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded ids; labels are -100 on prompt and padding, so only answers are learnt."""
    rows = [ex["prompt_ids"] + ex["answer_ids"] for ex in batch]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (ex, row) in enumerate(zip(batch, rows, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        start = len(ex["prompt_ids"])
        labels[i, start : len(row)] = torch.tensor(ex["answer_ids"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class Trainer:
    """The loop: fixed per-epoch order from the seed, so a resumed run sees the same batches."""

    def __init__(
        self,
        model: Any,
        recipe: CausalRecipe,
        train: list[dict[str, Any]],
        dev: list[dict[str, Any]],
        ckpt: Path,
        pad: int,
        identity: dict[str, Any] | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.recipe, self.train, self.dev, self.ckpt, self.pad = recipe, train, dev, ckpt, pad
        self.engine = engine or Engine(recipe.micro_batch, recipe.precision)
        self.identity = identity or {}  # what a checkpoint must match to be resumed
        self.per_epoch = max(1, (len(train) + recipe.batch_size - 1) // recipe.batch_size)
        self.total = recipe.max_steps or self.per_epoch * recipe.epochs
        self.model = self.engine.prepare(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        warm = max(1, int(self.total * recipe.warmup))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min((s + 1) / warm, max(0.0, (self.total - s) / max(1, self.total - warm)))
        )
        self.step, self.history = 0, list[dict[str, float]]()
        self.before, self.started = 0.0, time.monotonic()  # seconds spent by earlier runs of this training

    def elapsed(self) -> float:
        """Training seconds across every run that led here (a resumed run adds to its checkpoint's)."""
        return self.before + time.monotonic() - self.started

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def batches(self, epoch: int) -> list[list[dict[str, Any]]]:
        order = list(range(len(self.train)))
        random.Random(self.recipe.seed * 1000 + epoch).shuffle(order)
        size = self.recipe.batch_size
        return [[self.train[j] for j in order[k : k + size]] for k in range(0, len(order), size)]

    def fit(self) -> list[dict[str, float]]:
        self.resume()
        main = self.engine.is_main
        bar = tqdm(total=self.total, initial=self.step, desc="causal-finetune", unit="step", disable=not main)
        for batch in self.engine.epochs_of(self.batches, self.step, self.per_epoch):
            if self.step >= self.total:
                break
            loss = self.train_step(batch)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if main and (self.step % self.per_epoch == 0 or self.step == self.total):
                self.history.append({"step": self.step, "loss": round(loss, 4), **self.evaluate()})
                tqdm.write(f"causal-finetune: {self.history[-1]}")
            if self.step % self.recipe.checkpoint_every == 0 or self.step == self.total:
                self.save()
        bar.close()
        return self.history

    def train_step(self, batch: list[dict[str, Any]]) -> float:
        """One optimizer step on a global batch: every process's share, its micro-batches accumulated."""
        self.model.train()
        count = sum(len(ex["answer_ids"]) for ex in batch)

        def loss_of(rows: list[dict[str, Any]]) -> torch.Tensor:
            inputs = {k: v.to(self.device) for k, v in collate(rows, self.pad).items()}
            mean: torch.Tensor = self.model(**inputs).loss  # over the rows' answer tokens
            return mean * (sum(len(ex["answer_ids"]) for ex in rows) / count)

        loss = self.engine.accumulate(self.model, batch, loss_of)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad()
        self.step += 1
        return loss

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Dev loss and answer exactness under teacher forcing: a cheap signal, not the real evaluation
        (the main process's, on the model without its DDP wrapper)."""
        model = self.engine.unwrap(self.model)
        model.eval()
        losses, exact = [], 0
        for k in range(0, len(self.dev), 32):
            batch = collate(self.dev[k : k + 32], self.pad)
            inputs = {name: v.to(self.device) for name, v in batch.items()}
            out = model(**inputs)
            losses.append(float(out.loss))
            guess = out.logits[:, :-1].argmax(-1)
            gold = inputs["labels"][:, 1:]
            keep = gold != IGNORE
            exact += int(((guess == gold) | ~keep).all(-1).sum())
        return {
            "dev_loss": round(sum(losses) / max(1, len(losses)), 4),
            "dev_exact": round(exact / max(1, len(self.dev)), 4),
        }

    def save(self) -> None:
        """The main process writes the checkpoint (every process holds the same state); all wait for it."""
        if self.engine.is_main:
            self._write_checkpoint()
        self.engine.barrier()

    def _write_checkpoint(self) -> None:
        from peft import get_peft_model_state_dict

        self.ckpt.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "adapter": get_peft_model_state_dict(self.engine.unwrap(self.model)),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "history": self.history,
            "identity": self.identity,
            "seconds": self.elapsed(),
        }
        path = self.ckpt / f"step-{self.step:07d}.pt"
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
        for old in sorted(self.ckpt.glob("step-*.pt"))[:-2]:
            old.unlink()

    def resume(self) -> None:
        from peft import set_peft_model_state_dict

        found = sorted(self.ckpt.glob("step-*.pt")) if self.ckpt.is_dir() else []
        if not found:
            return
        state = torch.load(found[-1], map_location=self.device, weights_only=False)
        theirs = state.get("identity", {})
        changed = sorted(k for k in {*theirs, *self.identity} if theirs.get(k) != self.identity.get(k))
        if changed:
            raise UsageError(
                f"{found[-1]}: made with another {', '.join(changed)}; resuming would mix two trainings: "
                f"give a new --out, or delete {self.ckpt}"
            )
        set_peft_model_state_dict(self.engine.unwrap(self.model), state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step, self.history = int(state["step"]), list(state["history"])
        self.before, self.started = float(state.get("seconds", 0.0)), time.monotonic()
        if self.engine.is_main:
            tqdm.write(f"causal-finetune: resuming from {found[-1].name}")
