"""The functional entry point: ``hypergradient(inner_loss, outer_loss, ...)``."""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from . import methods as _methods
from .params import Params, detached
from .rng import RngReplay, with_replayed_rng
from .second_order import explain_double_backward_error, second_order_kernels


def hypergradient(inner_loss: Callable, outer_loss: Callable, inner_params: Params, outer_params: Params,
                  inner_batch: Any, outer_batch: Any, method: str | _methods.HypergradientMethod, *,
                  state: Any = None, return_result: bool = False):
    """d outer_loss(w*(x), x) / dx for every outer parameter x, with w*(x) the inner solution as ``method`` models it.

    Args:
        inner_loss, outer_loss: ``loss(inner_params, outer_params, batch) -> scalar tensor``.
        inner_params, outer_params: dicts ``name -> Tensor`` (current values; never modified).
        inner_batch, outer_batch: passed through to the losses (a list of inner batches gives one per unroll step).
        method: a registered name (see ``bilevel.methods.names()``) or a method object.
        state: the ``state`` of the previous result, for methods that warm-start.
        return_result: return the full :class:`HypergradientResult` (diagnostics, state) instead of the dict.

    Every pass of one level inside this call starts from the same random state (same dropout masks), and methods
    that need second derivatives run attention on the math SDPA kernel.

    >>> grads = hypergradient(g, f, {"w": w}, {"lam": lam}, train, val, "cg")
    """
    method = _methods.get(method)
    if not outer_params:
        raise ValueError("hypergradient: outer_params is empty; pass the dict of parameters to differentiate")
    if not inner_params:
        raise ValueError("hypergradient: inner_params is empty; pass the dict of inner parameters")
    for name, value in {**inner_params, **outer_params}.items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            raise TypeError(f"hypergradient: parameter '{name}' must be a floating-point tensor, got "
                            f"{type(value).__name__}{'' if not isinstance(value, torch.Tensor) else ' ' + str(value.dtype)}")
    inner = with_replayed_rng(inner_loss, RngReplay())
    outer = with_replayed_rng(outer_loss, RngReplay())
    kernels = second_order_kernels() if method.needs_second_derivatives else contextlib.nullcontext()
    try:
        with torch.enable_grad(), kernels:
            result = method.compute(inner, outer, detached(inner_params, True), detached(outer_params, True),
                                    inner_batch, outer_batch, state)
    except RuntimeError as error:
        explained = explain_double_backward_error(error, method.name)
        if explained is error:
            raise
        raise explained from error
    result.grads = {k: result.grads[k].detach() for k in outer_params}
    return result if return_result else result.grads
