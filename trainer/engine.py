"""The fine-tuning stages' engine: Hugging Face Accelerate under both loops (encoder and causal).

One command runs on one CPU, one GPU, or N processes under `accelerate launch` / `torchrun` (DDP; FSDP or
DeepSpeed through an accelerate config file). Every process walks the same global batches in the same order
(the seed decides it, so a resumed run sees the same batches); each takes its share of a batch (`rank::world`)
and, with `micro_batch`, cuts it into micro-batches whose gradients accumulate. A loss is a *sum* over the
rows (or tokens) of a share divided by the count over the whole global batch, so the summed gradient is the
one-process gradient of the same global batch, whatever the number of processes or micro-batches. Only the
main process writes (checkpoints, outputs), and the others wait for it at a barrier.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch

from trainer.errors import UsageError

T = TypeVar("T")
PRECISIONS = ("auto", "no", "bf16", "fp16")


def precision_for(wanted: str) -> str:
    """`auto`: bf16 on a GPU that computes in it, else fp32 ("no"). Not bf16 on a CPU by default, though on one
    with native bf16 (AVX-512 BF16, AMX) it is 1.9x faster a step (bench/README.md, "Fine-tuning engine"): the
    same command would then train differently on CPUs with and without it; `--precision bf16` asks for it."""
    if wanted not in PRECISIONS:
        raise UsageError(f"--precision {wanted!r}: use one of {', '.join(PRECISIONS)}")
    if wanted != "auto":
        return wanted
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def processes() -> Any:
    """Accelerate's process state (one per program): on a machine without a GPU, several processes started
    by `torchrun` (or mpirun) meet over gloo; on GPUs, over NCCL."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """True in a single process, and in the main one of `accelerate launch` / `torchrun`."""
    return bool(processes().is_main_process)


def barrier() -> None:
    """Every process waits here for the others (a no-op in a single process)."""
    processes().wait_for_everyone()


class Engine:
    """An Accelerator, and the rules by which every process shares a global batch."""

    def __init__(self, micro_batch: int = 0, precision: str = "auto") -> None:
        from accelerate import Accelerator

        self.precision = precision_for(precision)
        processes()  # the process group first, on the CPU where there is no GPU
        self.accelerator = Accelerator(mixed_precision=self.precision, cpu=not torch.cuda.is_available())
        self.micro_batch = micro_batch
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def device(self) -> torch.device:
        device: torch.device = self.accelerator.device
        return device

    def prepare(self, model: Any) -> Any:
        """The model placed on this process's device and, with several processes, wrapped for DDP."""
        return self.accelerator.prepare_model(model)

    def unwrap(self, model: Any) -> Any:
        return self.accelerator.unwrap_model(model)

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def share(self, batch: Sequence[T]) -> list[list[T]]:
        """This process's rows of a global batch, as micro-batches (one per accumulation step; the same
        number on every process, some possibly empty on a short last batch)."""
        mine = list(batch[self.rank :: self.world])
        per_process = math.ceil(len(batch) / self.world)
        steps = max(1, math.ceil(per_process / self.micro_batch)) if self.micro_batch > 0 else 1
        size = math.ceil(per_process / steps)
        return [mine[k * size : (k + 1) * size] for k in range(steps)]

    def accumulate(self, model: Any, batch: Sequence[T], loss_of: Callable[[list[T]], torch.Tensor]) -> float:
        """Backward over this process's share of `batch`; gradients are all-reduced once, at the last
        micro-batch. `loss_of(rows)` is the rows' summed loss over the whole batch's count. Returns the
        global batch's loss (summed over processes)."""
        chunks = self.share(batch)
        total = torch.zeros((), device=self.device)
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            if not chunk and not last:
                continue
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(model)
            with sync:
                with self.accelerator.autocast():
                    # a process with no rows at the syncing step still joins the all-reduce, with a zero loss
                    loss = loss_of(chunk) if chunk else loss_of(list(batch[:1])) * 0.0
                self.accelerator.backward(loss * self.world)  # DDP averages over processes: undo it
            total += loss.detach().float()
        return float(self.accelerator.reduce(total, reduction="sum"))

    def epochs_of(self, order: Callable[[int], list[list[T]]], start: int, per_epoch: int) -> Iterator[list[T]]:
        """The global batches from optimizer step `start` on, epoch after epoch (each epoch's order from
        `order(epoch)`): a resumed run continues exactly where the checkpoint left off."""
        epoch, offset = divmod(start, per_epoch)
        while True:
            yield from order(epoch)[offset:]
            epoch, offset = epoch + 1, 0
