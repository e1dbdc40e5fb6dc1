"""The functional entry point: ``hypergradient(inner_loss, outer_loss, ...)``."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch

from . import methods as _methods
from .params import Params, detached
from .autodiff import StepBatches, parts
from .autodiff.compiled import LIBRARY_WRAPPER
from .rng import RngReplay, with_replayed_rng
from .attention_kernels import explain_double_backward_error, second_order_kernels


def hypergradient(inner_loss: Callable, outer_loss: Callable, inner_params: Params, outer_params: Params,
                  inner_batch: Any, outer_batch: Any, method: str | _methods.HypergradientMethod, *,
                  state: Any = None, return_result: bool = False, inner_lr: Optional[float] = None,
                  check_finite: bool = True):
    """d outer_loss(w*(x), x) / dx for every outer parameter x, with w*(x) the inner solution as ``method`` models it.

    Args:
        inner_loss, outer_loss: ``loss(inner_params, outer_params, batch) -> scalar tensor``.
        inner_params, outer_params: dicts ``name -> Tensor`` (current values; never modified).
        inner_batch, outer_batch: passed through to the losses (``bilevel.StepBatches`` gives an unroll, or a
            method with ``fresh_batches=True``, one batch per step; anything else, a DataLoader's ``[x, y]`` list
            included, is one batch).
        method: a registered name (see ``bilevel.methods.names()``), a ``MethodSpec`` or a method object.
        state: the ``state`` of the previous result, for methods that warm-start.
        return_result: return the full :class:`HypergradientResult` (diagnostics, state) instead of the dict.
        inner_lr: the inner learning rate, for methods that model an inner step (``finite_difference``, ``unroll``)
            and were not given theirs.
        check_finite: raise ``FloatingPointError`` naming the culprit (a loss, or the method) when the
            hypergradient is not finite, instead of returning NaN.

    Every pass of one level inside this call starts from the same random state (same dropout masks), and methods
    that need second derivatives run attention on the math SDPA kernel.

    >>> grads = hypergradient(g, f, {"w": w}, {"lam": lam}, train, val, "cg")
    """
    method = _methods.build(method, inner_lr=inner_lr)
    missing = method.missing_settings()
    if missing:
        raise ValueError(f"hypergradient: method '{method.name}' models the inner optimizer's step and needs "
                         f"{', '.join(missing)}; pass inner_lr=... (the inner learning rate) or set it on the method")
    for argument, value in (("inner_params", inner_params), ("outer_params", outer_params)):
        if not isinstance(value, Mapping):
            raise TypeError(f"hypergradient: {argument} must be a dict of named tensors, got {type(value).__name__}; "
                            f"wrap it, e.g. {{'w': tensor}} (the losses then read params['w'])")
    if not outer_params:
        raise ValueError("hypergradient: outer_params is empty; pass the dict of parameters to differentiate")
    if not inner_params:
        raise ValueError("hypergradient: inner_params is empty; pass the dict of inner parameters")
    for name, value in {**inner_params, **outer_params}.items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            raise TypeError(f"hypergradient: parameter '{name}' must be a floating-point tensor, got "
                            f"{type(value).__name__}{'' if not isinstance(value, torch.Tensor) else ' ' + str(value.dtype)}")
    keys = f"inner parameters: {', '.join(inner_params)}; outer parameters: {', '.join(outer_params)}"
    inner = _checked(with_replayed_rng(inner_loss, RngReplay()), "inner_loss", keys)
    outer = _checked(with_replayed_rng(outer_loss, RngReplay()), "outer_loss", keys)
    kernels = second_order_kernels() if method.needs_second_derivatives else contextlib.nullcontext()
    try:
        with torch.enable_grad(), kernels:
            result = method.compute(inner, outer, detached(inner_params, True), detached(outer_params, True),
                                    inner_batch, outer_batch, state)
    except RuntimeError as error:
        if check_finite:  # a NaN loss makes solvers fail in ways that blame the solver: name the loss instead
            _raise_if_loss_not_finite(inner, outer, inner_params, outer_params, inner_batch, outer_batch, method)
        explained = explain_double_backward_error(error, method.name)
        if explained is error:
            raise
        raise explained from error
    result.grads = {k: result.grads[k].detach() for k in outer_params}
    if check_finite and not _finite(result):
        _raise_if_loss_not_finite(inner, outer, inner_params, outer_params, inner_batch, outer_batch, method)
        culprit = next((f"hypergradient of '{k}'" for k, v in result.grads.items()
                        if not bool(torch.isfinite(v).all())), "loss")  # else a loss at its own iterates is not
        raise FloatingPointError(f"hypergradient: method '{method.name}' returned a non-finite {culprit} from finite "
                                 "losses at the given parameters; check its settings (step sizes, iterations)")
    return result if return_result else result.grads


def _finite(result) -> bool:
    """Whether the hypergradient and the losses the method reports are finite (a NaN loss can give finite zeros)."""
    values = [v.all() for v in map(torch.isfinite, result.grads.values())]
    device = values[0].device
    values += [torch.isfinite(torch.as_tensor(result.diagnostics[k], device=device)).all()
               for k in ("inner_loss", "outer_loss") if k in result.diagnostics]
    return bool(torch.stack(values).all())


def _checked(loss: Callable, role: str, keys: str) -> Callable:
    """``loss`` with one-line errors for the two common mistakes: a non-scalar value and a parameter name the
    dicts do not have."""

    def call(inner_params, outer_params, batch):
        try:
            value = loss(inner_params, outer_params, batch)
        except KeyError as error:
            raise KeyError(f"hypergradient: {role} looked up {error}, which it did not find ({keys}); use the "
                           "dicts' names in the loss") from None
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"hypergradient: {role} returned {shape}, not a scalar tensor; reduce it (e.g. .mean())")
        return value.reshape(())

    setattr(call, LIBRARY_WRAPPER, loss)  # the plain loss, for passes that compile it (bilevel.autodiff.compiled)
    return call


def _raise_if_loss_not_finite(inner, outer, inner_params, outer_params, inner_batch, outer_batch, method) -> None:
    """Evaluate both losses at the given point (only on failure) and raise naming the one that is not finite."""
    first = lambda batch: batch.batches[0] if isinstance(batch, StepBatches) else batch  # noqa: E731
    with torch.no_grad():
        for role, loss, batch in (("inner_loss", inner, first(inner_batch)),
                                  ("outer_loss", outer, first(outer_batch))):
            for piece in parts(batch):
                value = loss(inner_params, outer_params, piece)
                if not bool(torch.isfinite(value)):
                    raise FloatingPointError(f"hypergradient: {role} is {float(value)} at the given parameters, so "
                                             f"method '{method.name}' cannot give a finite hypergradient; check the "
                                             "data and the parameters")
