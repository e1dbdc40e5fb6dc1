"""Derivative passes over a batch: gradient accumulation over micro-batches and the cross-rank average, in one place.

Every method obtains first derivatives of a loss through :func:`loss_gradients`. A batch given as
:class:`MicroBatches` is processed one micro-batch at a time (one graph alive at a time) and the derivatives are
averaged; then, under ``torch.distributed``, they are averaged across ranks in one collective. Equal micro-batch
sizes make the result equal to the derivative on the whole batch.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple

import torch

from .distributed import is_distributed, mean_across_ranks
from .params import Params


class MicroBatches:
    """One logical batch split into micro-batches; derivatives are averaged over them.

    >>> bilevel.hypergradient(g, f, w, x, MicroBatches([b1, b2]), MicroBatches([v1, v2]), "finite_difference")
    """

    def __init__(self, batches: Sequence[Any]):
        self.batches = tuple(batches)
        if not self.batches:
            raise ValueError("MicroBatches: pass at least one micro-batch")

    def __len__(self) -> int:
        return len(self.batches)

    def __repr__(self) -> str:
        return f"MicroBatches({len(self.batches)} micro-batches)"


class StepBatches:
    """One batch per step of an unroll (a plain list, tuple or dict is one batch, as a DataLoader yields it).

    >>> bilevel.hypergradient(g, f, w, x, StepBatches([b1, b2, b3]), val, bilevel.methods.Unroll(steps=3, lr=0.1))
    """

    def __init__(self, batches: Sequence[Any]):
        self.batches = tuple(batches)
        if not self.batches:
            raise ValueError("StepBatches: pass at least one batch")

    def __len__(self) -> int:
        return len(self.batches)

    def __repr__(self) -> str:
        return f"StepBatches({len(self.batches)} batches)"


def per_step_batches(batch: Any, steps: int) -> Tuple[Any, ...]:
    """The batch of each of ``steps`` unroll steps: those of :class:`StepBatches`, else ``batch`` every step."""
    if not isinstance(batch, StepBatches):
        return (batch,) * steps
    if len(batch) != steps:
        raise ValueError(f"unroll: StepBatches holds {len(batch)} batches but steps={steps}; pass one batch per step")
    return batch.batches


def parts(batch: Any) -> Tuple[Any, ...]:
    """The micro-batches of ``batch`` (a plain batch is one part)."""
    return batch.batches if isinstance(batch, MicroBatches) else (batch,)


def loss_gradients(loss: Callable, inner_params: Params, outer_params: Params, batch: Any, wrt: Sequence[Params],
                   create_graph: bool = False, across_ranks: bool = True) -> Tuple[torch.Tensor, list]:
    """``(loss value, [d loss / d p for p in wrt])`` on ``batch``, averaged over micro-batches and ranks.

    Parameters the loss does not depend on get zero derivatives. Under ``torch.distributed`` the loss value and the
    derivatives are averaged across ranks; ``across_ranks=False`` leaves that to the caller (to reduce a combination
    of several passes once).
    """
    pieces = parts(batch)
    flat = [value for params in wrt for value in params.values()]
    total_loss, sums = 0.0, None
    for index, piece in enumerate(pieces):
        value = loss(inner_params, outer_params, piece)
        # the parameters may carry a graph shared by all pieces (an unroll): keep it until the last piece
        keep = create_graph or index < len(pieces) - 1
        grads = torch.autograd.grad(value, flat, allow_unused=True, create_graph=create_graph, retain_graph=keep)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(flat, grads)]
        sums = grads if sums is None else [s + g for s, g in zip(sums, grads)]
        total_loss = total_loss + value.detach()
    if len(pieces) > 1:
        sums = [s / len(pieces) for s in sums]
        total_loss = total_loss / len(pieces)
    merged = {(i, name): None for i, params in enumerate(wrt) for name in params}
    merged = dict(zip(merged, sums))
    if across_ranks and is_distributed():  # the loss rides in the gradients' collective: the logged loss is the
        merged[None] = torch.as_tensor(total_loss).to(sums[0].dtype).reshape(1)  # global mean, as the gradient is
        merged = mean_across_ranks(merged)
        total_loss = merged.pop(None).reshape(())
    return total_loss, [{name: merged[(i, name)] for name in params} for i, params in enumerate(wrt)]
