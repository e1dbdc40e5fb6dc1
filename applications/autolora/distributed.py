"""AutoLoRA under ``torchrun``: the process group, sharded batches, and outputs written by rank 0 only.

``torchrun --nproc_per_node=N -m autolora.cli run ...`` runs the search and the retraining data-parallel. Every
rank holds the whole model; each global batch of ``N * batch_size`` examples (the batch one process would draw
with ``batch_size * N``) is split into N equal shards, one per rank. Derivatives are averaged across ranks (the
search through `bilevel`, the retraining after each backward pass), so every rank makes the same update and the
run equals one process at batch ``N * batch_size`` (for sequence-level losses and without dropout: see
docs/scaling.md). Rank 0 writes every output and evaluates; the other ranks
wait for it and receive its result, or its error. Outside ``torchrun`` everything here is a single process.
"""
from __future__ import annotations

import datetime
import os
import pickle
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from bilevel.distributed import is_distributed, mean_across_ranks, rank, world_size

__all__ = ["setup", "is_main", "on_main", "ShardedLoader", "average_gradients"]


def setup(device: torch.device) -> torch.device:
    """Join the ``torchrun`` process group (nccl on CUDA, gloo otherwise) if launched by torchrun.

    Returns the device of this rank: ``cuda:LOCAL_RANK`` for a CUDA run, ``device`` otherwise.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # Rank 0 evaluates and saves alone while the others wait in a collective: allow that to take hours,
        # not NCCL's default 10 minutes.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=6))
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def is_main() -> bool:
    """True on the rank that writes outputs (rank 0, or the only process)."""
    return rank() == 0


def on_main(function: Callable, *args, **kwargs):
    """Run ``function`` on rank 0 only and return its result on every rank.

    An exception on rank 0 is raised again on every rank (same type and message), so no rank waits forever for
    a rank that failed.
    """
    if not is_distributed():
        return function(*args, **kwargs)
    outcome = [None]
    if is_main():
        try:
            outcome = [("ok", function(*args, **kwargs))]
        except Exception as error:  # handed to the other ranks, then raised here too
            outcome = [("error", _picklable(error))]
    dist.broadcast_object_list(outcome, src=0)
    status, value = outcome[0]
    if status == "error":
        raise value
    return value


def _picklable(error: Exception) -> Exception:
    """``error`` itself if it can travel to the other ranks, else a RuntimeError with its type and message."""
    try:
        pickle.dumps(error)
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


class ShardedLoader:
    """Shuffled batches of ``dataset``, collated and moved to ``device``; under torchrun, this rank's shard.

    The global batches are those of ``DataLoader(shuffle=True, batch_size=batch_size * world_size)`` with a
    generator seeded by ``seed``; rank r takes rows ``[r * batch_size, (r + 1) * batch_size)`` of each. A last
    global batch that the ranks cannot share equally is trimmed to a multiple of the world size (at most
    ``world_size - 1`` rows per pass are skipped), so every rank takes the same number of steps.
    """

    def __init__(self, dataset: Sequence, collate: Callable, batch_size: int, seed: int, device: torch.device,
                 rank_index: int | None = None, size: int | None = None):
        self.dataset, self.collate, self.device, self.batch_size = dataset, collate, device, batch_size
        self.rank = rank() if rank_index is None else rank_index
        self.world = world_size() if size is None else size
        self.generator = torch.Generator().manual_seed(seed)
        self.indices = DataLoader(range(len(dataset)), batch_size=batch_size * self.world, shuffle=True,
                                  collate_fn=list, generator=self.generator)

    def state_dict(self) -> dict:
        """The shuffling generator's state: taken before a pass, it lets a resumed run replay that pass's order."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __iter__(self):
        for indices in self.indices:
            per_rank = len(indices) // self.world
            if per_rank == 0:
                continue
            mine = indices[self.rank * per_rank:(self.rank + 1) * per_rank]
            rows = (self.dataset.__getitems__(mine) if hasattr(self.dataset, "__getitems__")
                    else [self.dataset[i] for i in mine])
            batch = self.collate(rows)
            yield {key: value.to(self.device) for key, value in batch.items()}

    def __len__(self) -> int:
        n, global_batch = len(self.dataset), self.batch_size * self.world
        return n // global_batch + (1 if n % global_batch >= self.world else 0)


def average_gradients(parameters: Sequence[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over the ranks (one collective per dtype)."""
    if not is_distributed():
        return
    parameters = list(parameters)
    for p in parameters:  # a parameter without a gradient on this rank contributes zeros, so shapes agree
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    averaged = mean_across_ranks({str(i): p.grad for i, p in enumerate(parameters)})
    for i, p in enumerate(parameters):
        p.grad.copy_(averaged[str(i)])
