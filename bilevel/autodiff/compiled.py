"""Hessian-vector products compiled by ``torch.compile``: a ``torch.func`` vjp of the gradient, one graph per loss
and kind (``H v`` alone for AmIGO's linear system; ``H v``, the mixed product, the gradient and the loss at once for
SOBA's step).

An eager product pays for every elementwise operation of the loss's double backward as a separate pass through
memory; compiled, the forward, the gradient and the product are one fused program. On the 100,100-parameter data
cleaning problem of docs/stochastic.md one product takes 0.94 ms compiled, 2.28 ms eager and 1.26 ms in jitted JAX
(``python -m bench.stochastic_peers.primitives``). The graph is a forward computation (no autograd through it), so
torch 2.13's missing double backward in aot_autograd does not arise.

What it asks of the loss: a pure function of its tensors, which torch.compile can trace (the Engine's losses over
functional or ``functional_call`` levels are); no randomness, since the random state the eager products replay
(the same dropout masks for every pass) is not replayed inside a compiled graph; plain batches (micro-batches take
the eager path). The first product of a loss compiles it (seconds); later ones reuse the graph while the shapes stay.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

from .. import params as P
from ..distributed import mean_across_ranks
from ..params import Params

CACHE_SIZE = 8  # compiled functions kept; the oldest is dropped past it (each holds its loss and what it closes over)
_compiled: "OrderedDict[tuple[Callable, str], Callable]" = OrderedDict()


def plain_loss(loss: Callable) -> Callable:
    """``loss`` without the wrappers callers put around it (``__wrapped__``): the function the graph is traced from,
    the same object on every call, so that its compiled graph is found again."""
    while hasattr(loss, "__wrapped__"):
        loss = loss.__wrapped__
    return loss


def _matvec_function(loss: Callable) -> Callable:
    def product(inner: Params, outer: Params, batch, vector: Params) -> Params:
        gradient = torch.func.grad(loss)
        return torch.func.vjp(lambda w: gradient(w, outer, batch), inner)[1](vector)[0]

    return product


def _joint_function(loss: Callable) -> Callable:
    def products(inner: Params, outer: Params, batch, vector: Params):
        gradient_and_loss = torch.func.grad_and_value(loss)
        gradient, pullback, value = torch.func.vjp(lambda w, x: gradient_and_loss(w, x, batch), inner, outer,
                                                   has_aux=True)
        hvp, mixed = pullback(vector)
        return hvp, mixed, gradient, value

    return products


_KINDS = {"matvec": _matvec_function, "joint": _joint_function}


def _function(loss: Callable, kind: str) -> Callable:
    key = (plain_loss(loss), kind)
    function = _compiled.get(key)
    if function is None:
        function = _compiled[key] = torch.compile(_KINDS[kind](key[0]))
        while len(_compiled) > CACHE_SIZE:
            _compiled.popitem(last=False)
    return function


def compiled_matvec(loss: Callable, inner_params: Params, outer_params: Params, batch, vector: Params) -> Params:
    """``H v`` of ``loss`` at ``(inner_params, outer_params)`` on ``batch``, by the loss's compiled product (averaged
    across ranks under torch.distributed, as the eager products are)."""
    product = _function(loss, "matvec")(P.detached(inner_params), P.detached(outer_params), batch,
                                        P.detached(vector))
    return mean_across_ranks({k: product[k] for k in inner_params})


def compiled_products(loss: Callable, inner_params: Params, outer_params: Params, batch, vector: Params):
    """``(H v, (d^2 g / dx dw) v, grad_w g, g)`` at ``(inner_params, outer_params)`` on ``batch`` from one compiled
    call, as :meth:`InnerHessian.matvec_mixed_and_gradient` returns them (averaged across ranks in one collective)."""
    hvp, mixed, gradient, value = _function(loss, "joint")(P.detached(inner_params), P.detached(outer_params), batch,
                                                           P.detached(vector))
    joint = {**{("w", k): hvp[k] for k in inner_params}, **{("x", k): mixed[k] for k in outer_params},
             **{("g", k): gradient[k] for k in inner_params},
             ("loss",): value.to(next(iter(gradient.values())).dtype).reshape(1)}  # one dtype: one collective
    joint = mean_across_ranks(joint)
    return ({k: joint[("w", k)] for k in inner_params}, {k: joint[("x", k)] for k in outer_params},
            {k: joint[("g", k)] for k in inner_params}, joint[("loss",)].reshape(()))
