"""Arithmetic on parameter dicts (``name -> Tensor``), the one parameter representation of the library.

Every method works on dicts keyed like ``named_parameters()``; these helpers keep that arithmetic in one place.
"""
from __future__ import annotations

from typing import Dict, Iterable

import torch

Params = Dict[str, torch.Tensor]


def detached(params: Params, requires_grad: bool = False) -> Params:
    """Copies that share storage with ``params`` but no autograd history; optionally leaves that require grad."""
    return {k: v.detach().requires_grad_(requires_grad) for k, v in params.items()}


def add(a: Params, b: Params, scale: float | torch.Tensor = 1.0) -> Params:
    """``a + scale * b``; a number ``scale`` is fused into one kernel (no temporary for ``scale * b``)."""
    if isinstance(scale, (int, float)):
        return {k: torch.add(a[k], b[k], alpha=scale) for k in a}
    return {k: a[k] + scale * b[k] for k in a}


def sub(a: Params, b: Params) -> Params:
    """``a - b``."""
    return {k: a[k] - b[k] for k in a}


def scale(a: Params, factor: float | torch.Tensor) -> Params:
    """``factor * a``."""
    return {k: factor * v for k, v in a.items()}


def dot(a: Params, b: Params) -> torch.Tensor:
    """Inner product summed over all entries; accumulated in at least float32."""
    total = None
    for k in a:
        x, y = a[k], b[k]
        if x.dtype in (torch.float16, torch.bfloat16):
            x, y = x.float(), y.float()
        term = torch.sum(x * y)
        total = term if total is None else total + term
    return total if total is not None else torch.tensor(0.0)


def norm(a: Params) -> torch.Tensor:
    """Euclidean norm of all entries together."""
    return torch.sqrt(dot(a, a))


def zeros_like(a: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in a.items()}


def flatten(a: Params, keys: Iterable[str] | None = None) -> torch.Tensor:
    """One vector of all entries, in ``keys`` order (default: dict order)."""
    keys = list(a) if keys is None else list(keys)
    return torch.cat([a[k].reshape(-1) for k in keys])


def unflatten(vector: torch.Tensor, like: Params) -> Params:
    """Inverse of :func:`flatten` for dicts shaped like ``like``."""
    out, offset = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = vector[offset:offset + n].view_as(v)
        offset += n
    return out


def fill_missing_grads(grads: Iterable[torch.Tensor | None], params: Params) -> Params:
    """Pair ``torch.autograd.grad`` outputs with names, replacing ``None`` (no dependence) by zeros."""
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(params.items(), grads)}


def grad(output: torch.Tensor, params: Params, **kwargs) -> Params:
    """``d output / d params`` as a dict; parameters the output does not depend on get zeros."""
    grads = torch.autograd.grad(output, list(params.values()), allow_unused=True, **kwargs)
    return fill_missing_grads(grads, params)

