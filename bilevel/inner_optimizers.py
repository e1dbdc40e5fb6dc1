"""Differentiable inner optimizers for unrolled hypergradients (SGD, SGD with momentum, Adam).

Each optimizer is a pure ``init(params) -> state`` / ``update(grads, state, params) -> (params, state)`` pair in the
style of optax, so the graph through every step stays intact. Update rules follow ``torch.optim`` exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch

from .params import Params


@dataclass
class SGD:
    """w <- w - lr * g."""

    lr: float

    def init(self, params: Params) -> Any:
        return None

    def update(self, grads: Params, state: Any, params: Params) -> Tuple[Params, Any]:
        return {k: torch.add(params[k], grads[k], alpha=-self.lr) for k in params}, state  # as torch.optim.SGD


@dataclass
class Momentum:
    """torch.optim.SGD with momentum: b <- mu b + (1 - dampening) g (b = g on the first step); w <- w - lr b."""

    lr: float
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = False

    def init(self, params: Params) -> Any:
        return None

    def update(self, grads, state, params):
        if state is None:
            buffers = dict(grads)
        else:
            buffers = {k: self.momentum * state[k] + (1 - self.dampening) * grads[k] for k in grads}
        direction = {k: grads[k] + self.momentum * buffers[k] for k in grads} if self.nesterov else buffers
        return {k: torch.add(params[k], direction[k], alpha=-self.lr) for k in params}, buffers


def _differentiable_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with derivative 0 (not inf * 0 = nan) where x == 0."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


@dataclass
class Adam:
    """torch.optim.Adam: m, v moving averages with bias correction; w <- w - lr m_hat / (sqrt(v_hat) + eps)."""

    lr: float
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def init(self, params: Params) -> Any:
        return {"step": 0, "m": {k: torch.zeros_like(v) for k, v in params.items()},
                "v": {k: torch.zeros_like(v) for k, v in params.items()}}

    def update(self, grads, state, params):
        beta1, beta2 = self.betas
        step = state["step"] + 1
        m = {k: beta1 * state["m"][k] + (1 - beta1) * grads[k] for k in grads}
        v = {k: beta2 * state["v"][k] + (1 - beta2) * grads[k] * grads[k] for k in grads}
        correction1, correction2 = 1 - beta1 ** step, math.sqrt(1 - beta2 ** step)
        new = {k: params[k] - (self.lr / correction1) * m[k] / (_differentiable_sqrt(v[k]) / correction2 + self.eps)
               for k in params}
        return new, {"step": step, "m": m, "v": v}


INNER_OPTIMIZERS: Dict[str, type] = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


def make_inner_optimizer(name: str, lr: float, **settings: Any):
    """An optimizer from ``INNER_OPTIMIZERS`` by name."""
    if name not in INNER_OPTIMIZERS:
        raise ValueError(f"unknown inner optimizer '{name}'; choose one of {', '.join(INNER_OPTIMIZERS)}")
    return INNER_OPTIMIZERS[name](lr=lr, **settings)
