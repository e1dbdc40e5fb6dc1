"""How a batch reaches the losses: one batch, micro-batches whose derivatives are averaged, or one batch per unroll
step; and the one reducer that averages a computation over micro-batches."""
from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple

import torch


class _Batches:
    """A non-empty sequence of batches, kept as a tuple; subclasses say what the sequence means."""

    what = "batches"

    def __init__(self, batches: Sequence[Any]):
        self.batches = tuple(batches)
        if not self.batches:
            raise ValueError(f"{type(self).__name__}: pass at least one batch")

    def __len__(self) -> int:
        return len(self.batches)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.batches)} {self.what})"


class MicroBatches(_Batches):
    """One logical batch split into micro-batches; derivatives are averaged over them.

    >>> bilevel.hypergradient(g, f, w, x, MicroBatches([b1, b2]), MicroBatches([v1, v2]), "cg")
    """

    what = "micro-batches"


class StepBatches(_Batches):
    """One batch per step of an unroll, or of a method that samples per step (AmIGO's and F2SA's
    ``fresh_batches``); a plain list, tuple or dict is one batch, as a DataLoader yields it.

    >>> bilevel.hypergradient(g, f, w, x, StepBatches([b1, b2, b3]), val, bilevel.methods.Unroll(steps=3, lr=0.1))
    """


def per_step_batches(batch: Any, steps: int, owner: str = "unroll", uses: str = "") -> Tuple[Any, ...]:
    """The batch of each of ``steps`` steps of ``owner``: those of :class:`StepBatches`, else ``batch`` every step.
    ``uses`` says, for the error, what the batches are for where they are not all steps."""
    if not isinstance(batch, StepBatches):
        return (batch,) * steps
    if len(batch) != steps:
        raise ValueError(f"{owner}: StepBatches holds {len(batch)} batches but it takes {steps}"
                         f"{f' ({uses})' if uses else ' steps'}; pass that many batches")
    return batch.batches


def parts(batch: Any) -> Tuple[Any, ...]:
    """The micro-batches of ``batch`` (a plain batch is one part)."""
    return batch.batches if isinstance(batch, MicroBatches) else (batch,)


def mean_over_parts(batch: Any, compute: Callable[[Any, bool], List[torch.Tensor]]) -> List[torch.Tensor]:
    """The mean over the micro-batches of ``batch`` of ``compute(piece, is_last)``, a list of tensors (a plain batch
    is one part, returned as computed). Every derivative pass of the library reduces micro-batches here."""
    pieces = parts(batch)
    total = None
    for index, piece in enumerate(pieces):
        values = compute(piece, index == len(pieces) - 1)
        total = values if total is None else [t + v for t, v in zip(total, values)]
    return total if len(pieces) == 1 else [t / len(pieces) for t in total]
