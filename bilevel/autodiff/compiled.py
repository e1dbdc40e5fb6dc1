"""First and second derivatives compiled by ``torch.compile``: ``torch.func`` transforms of a loss, one graph per
loss and kind (the gradient and the loss, for :func:`compile_gradients`' losses in every first-derivative pass;
``H v`` alone, for AmIGO's linear system; ``H v``, the mixed product, the gradient and the loss at once, for SOBA's
step).

An eager pass pays for every elementwise operation of the loss's forward and backward (and of its double backward,
for a product) as a separate pass through memory; compiled, they are one fused program. On the 100,100-parameter data
cleaning problem of docs/stochastic.md one product took 0.94 ms compiled, 2.28 ms eager and 1.26 ms in jitted JAX,
and in a slower hour of the same machine one gradient 1.16 ms compiled, 1.78 ms eager and 1.68 ms in JAX
(``python -m bench.stochastic_peers.primitives``). The graphs are forward computations (no autograd through them),
so torch 2.13's missing double backward in aot_autograd does not arise.

What it asks of the loss: a pure function of its tensors, which torch.compile can trace (the Engine's losses over
functional or ``functional_call`` levels are); no randomness, since the random state the eager passes replay (the
same dropout masks for every pass) is not replayed inside a compiled graph. The first call of a kind compiles it
(seconds); later ones reuse the graph while the shapes stay.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

from .. import params as P
from ..distributed import mean_across_ranks
from ..params import Params

CACHE_SIZE = 8  # compiled functions kept; the oldest is dropped past it (each holds its loss and what it closes over)
_compiled: "OrderedDict[tuple[Callable, object], Callable]" = OrderedDict()  # (loss, kind) -> compiled function


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


def _function(loss: Callable, kind, build: Callable[[Callable], Callable]) -> Callable:
    """The compiled ``build(loss)``, found again by ``(loss unwrapped, kind)``."""
    key = (plain_loss(loss), kind)
    function = _compiled.get(key)
    if function is None:
        function = _compiled[key] = torch.compile(build(key[0]))
        while len(_compiled) > CACHE_SIZE:
            _compiled.popitem(last=False)
    return function


class CompiledGradients:
    """A loss whose first derivatives :func:`bilevel.autodiff.loss_gradients` takes from a compiled
    ``torch.func.grad_and_value`` (see :func:`compile_gradients`); called, it is the loss."""

    def __init__(self, loss: Callable):
        self.__wrapped__ = loss

    def __call__(self, inner_params: Params, outer_params: Params, batch):
        return self.__wrapped__(inner_params, outer_params, batch)


def compile_gradients(loss: Callable) -> CompiledGradients:
    """``loss(inner_params, outer_params, batch)`` marked so that every first-derivative pass of the library on it
    (the Engine's inner steps under ``EngineConfig(compile_gradients=True)``, the methods' gradients) runs as one
    compiled program: the same numbers as eager. Passes it cannot take stay eager: through a graph the parameters
    carry (an unroll), with ``create_graph``, or in parameters other than the two dicts the loss is called with."""
    return CompiledGradients(loss)


def _is_marked(loss: Callable) -> bool:
    while not isinstance(loss, CompiledGradients) and hasattr(loss, "__wrapped__"):
        loss = loss.__wrapped__
    return isinstance(loss, CompiledGradients)


def compiled_gradients(loss: Callable, inner_params: Params, outer_params: Params, wrt, create_graph: bool):
    """``piece -> (loss, [d loss / d p for p in wrt])`` by the loss's compiled gradient, or None where the eager pass
    must be taken: ``loss`` not marked by :func:`compile_gradients`, ``create_graph``, parameters with a graph of
    their own, or a ``wrt`` entry that is not ``inner_params`` or ``outer_params`` itself."""
    if create_graph or not _is_marked(loss):
        return None
    argnums = tuple(0 if params is inner_params else 1 if params is outer_params else None for params in wrt)
    if None in argnums or len(set(argnums)) < len(argnums):
        return None
    if any(t.grad_fn is not None for params in (inner_params, outer_params) for t in params.values()):
        return None
    function = _function(loss, ("gradient", argnums), lambda plain: torch.func.grad_and_value(plain, argnums))
    inner, outer = P.detached(inner_params), P.detached(outer_params)

    def on_piece(batch):
        grads, value = function(inner, outer, batch)
        return value, [g[k] for g, params in zip(grads, wrt) for k in params]

    return on_piece


def compiled_matvec(loss: Callable, inner_params: Params, outer_params: Params, batch, vector: Params) -> Params:
    """``H v`` of ``loss`` at ``(inner_params, outer_params)`` on ``batch``, by the loss's compiled product (averaged
    across ranks under torch.distributed, as the eager products are)."""
    function = _function(loss, "matvec", _matvec_function)
    product = function(P.detached(inner_params), P.detached(outer_params), batch, P.detached(vector))
    return mean_across_ranks({k: product[k] for k in inner_params})


def compiled_products(loss: Callable, inner_params: Params, outer_params: Params, batch, vector: Params):
    """``(H v, (d^2 g / dx dw) v, grad_w g, g)`` at ``(inner_params, outer_params)`` on ``batch`` from one compiled
    call, as :meth:`InnerHessian.matvec_mixed_and_gradient` returns them (averaged across ranks in one collective)."""
    function = _function(loss, "joint", _joint_function)
    hvp, mixed, gradient, value = function(P.detached(inner_params), P.detached(outer_params), batch,
                                           P.detached(vector))
    joint = {**{("w", k): hvp[k] for k in inner_params}, **{("x", k): mixed[k] for k in outer_params},
             **{("g", k): gradient[k] for k in inner_params},
             ("loss",): value.to(next(iter(gradient.values())).dtype).reshape(1)}  # one dtype: one collective
    joint = mean_across_ranks(joint)
    return ({k: joint[("w", k)] for k in inner_params}, {k: joint[("x", k)] for k in outer_params},
            {k: joint[("g", k)] for k in inner_params}, joint[("loss",)].reshape(()))
