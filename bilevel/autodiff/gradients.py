"""First derivatives of a loss on a batch, averaged over micro-batches and, under ``torch.distributed``, over ranks.

Every method obtains first derivatives through :func:`loss_gradients`; a loss marked by
:func:`bilevel.autodiff.compile_gradients` has them from its compiled gradient (the same numbers). A batch given as
:class:`MicroBatches` is processed one micro-batch at a time (one graph alive at a time) and the derivatives are
averaged; then they are averaged across ranks in one collective. Equal micro-batch sizes make the result equal to
the derivative on the whole batch.
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch

from ..distributed import is_distributed, mean_across_ranks
from ..params import Params
from .batches import mean_over_parts
from .compiled import compiled_gradients


def loss_gradients(loss: Callable, inner_params: Params, outer_params: Params, batch, wrt: Sequence[Params],
                   create_graph: bool = False, across_ranks: bool = True) -> Tuple[torch.Tensor, list]:
    """``(loss value, [d loss / d p for p in wrt])`` on ``batch``, averaged over micro-batches and ranks.

    Parameters the loss does not depend on get zero derivatives. Under ``torch.distributed`` the loss value and the
    derivatives are averaged across ranks; ``across_ranks=False`` leaves that to the caller (to reduce a combination
    of several passes once).
    """
    flat = [value for params in wrt for value in params.values()]
    compiled = compiled_gradients(loss, inner_params, outer_params, wrt, create_graph)

    def on_part(piece, last: bool):
        result = compiled(piece) if compiled is not None else None
        if result is not None:
            value, grads = result
            return [value.detach(), *grads]
        value = loss(inner_params, outer_params, piece)
        # the parameters may carry a graph shared by all pieces (an unroll): keep it until the last piece
        grads = torch.autograd.grad(value, flat, allow_unused=True, create_graph=create_graph,
                                    retain_graph=create_graph or not last)
        return [value.detach(), *(torch.zeros_like(p) if g is None else g for p, g in zip(flat, grads))]

    total_loss, *sums = mean_over_parts(batch, on_part)
    merged = {(i, name): None for i, params in enumerate(wrt) for name in params}
    merged = dict(zip(merged, sums))
    if across_ranks and is_distributed():  # the loss rides in the gradients' collective: the logged loss is the
        merged[None] = total_loss.to(sums[0].dtype).reshape(1)  # global mean, as the gradient is
        merged = mean_across_ranks(merged)
        total_loss = merged.pop(None).reshape(())
    return total_loss, [{name: merged[(i, name)] for name in params} for i, params in enumerate(wrt)]
