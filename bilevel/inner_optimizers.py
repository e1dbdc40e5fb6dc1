"""Differentiable inner optimizers for unrolled hypergradients (SGD, SGD with momentum, Adam, AdamW).

Each optimizer is a pure ``init(params) -> state`` / ``update(grads, state, params) -> (params, state)`` pair in the
style of optax, so the graph through every step stays intact. Update rules and the checks of their settings follow
``torch.optim`` exactly; :func:`model_of` maps a live ``torch.optim`` optimizer to the one that models it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch

from .params import Params


def _require(owner: str, condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"{owner}: {message}")


def _with_weight_decay(grads: Params, params: Params, weight_decay: float) -> Params:
    """torch.optim's coupled L2 term: g <- g + weight_decay * w."""
    if weight_decay == 0:
        return grads
    return {k: grads[k] + weight_decay * params[k] for k in grads}


@dataclass
class SGD:
    """w <- w - lr * (g + weight_decay w)."""

    lr: float
    weight_decay: float = 0.0

    def __post_init__(self):
        _require("sgd", self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")

    def init(self, params: Params) -> Any:
        return None

    def update(self, grads: Params, state: Any, params: Params) -> Tuple[Params, Any]:
        grads = _with_weight_decay(grads, params, self.weight_decay)
        return {k: torch.add(params[k], grads[k], alpha=-self.lr) for k in params}, state  # as torch.optim.SGD


@dataclass
class Momentum:
    """torch.optim.SGD with momentum: b <- mu b + (1 - dampening) g (b = g on the first step); w <- w - lr b
    (Nesterov: w <- w - lr (g + mu b)); g includes ``weight_decay * w``."""

    lr: float
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self):
        _require("momentum", self.momentum >= 0, f"momentum must be >= 0, got {self.momentum!r}")
        _require("momentum", self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _require("momentum", not self.nesterov or (self.momentum > 0 and self.dampening == 0),
                 "Nesterov momentum requires momentum > 0 and dampening = 0")

    def init(self, params: Params) -> Any:
        return None

    def update(self, grads, state, params):
        grads = _with_weight_decay(grads, params, self.weight_decay)
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
    """torch.optim.Adam: m, v moving averages with bias correction; w <- w - lr m_hat / (sqrt(v_hat) + eps), with
    ``weight_decay * w`` added to the gradient (coupled L2)."""

    lr: float
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self):
        owner = type(self).__name__.lower()
        self.betas = tuple(self.betas)
        _require(owner, len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"betas must be two numbers in [0, 1), got {self.betas!r}")
        _require(owner, self.eps >= 0, f"eps must be >= 0, got {self.eps!r}")
        _require(owner, self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")

    def init(self, params: Params) -> Any:
        return {"step": 0, "m": {k: torch.zeros_like(v) for k, v in params.items()},
                "v": {k: torch.zeros_like(v) for k, v in params.items()}}

    def _gradient(self, grads, params):
        return _with_weight_decay(grads, params, self.weight_decay)

    def _decayed(self, params):
        return params

    def update(self, grads, state, params):
        grads = self._gradient(grads, params)
        beta1, beta2 = self.betas
        step = state["step"] + 1
        m = {k: beta1 * state["m"][k] + (1 - beta1) * grads[k] for k in grads}
        v = {k: beta2 * state["v"][k] + (1 - beta2) * grads[k] * grads[k] for k in grads}
        correction1, correction2 = 1 - beta1 ** step, math.sqrt(1 - beta2 ** step)
        start = self._decayed(params)
        new = {k: start[k] - (self.lr / correction1) * m[k] / (_differentiable_sqrt(v[k]) / correction2 + self.eps)
               for k in params}
        return new, {"step": step, "m": m, "v": v}


@dataclass
class AdamW(Adam):
    """torch.optim.AdamW: Adam on the plain gradient, with decoupled decay w <- w (1 - lr weight_decay) first."""

    weight_decay: float = 1e-2

    def _gradient(self, grads, params):
        return grads

    def _decayed(self, params):
        return {k: params[k] * (1 - self.lr * self.weight_decay) for k in params} if self.weight_decay else params


INNER_OPTIMIZERS: Dict[str, type] = {"sgd": SGD, "momentum": Momentum, "adam": Adam, "adamw": AdamW}


def make_inner_optimizer(name: str, lr: float, **settings: Any):
    """An optimizer from ``INNER_OPTIMIZERS`` by name; unknown or invalid settings raise a one-line ValueError."""
    if name not in INNER_OPTIMIZERS:
        raise ValueError(f"unknown inner optimizer '{name}'; choose one of {', '.join(INNER_OPTIMIZERS)}")
    kind = INNER_OPTIMIZERS[name]
    valid = [f.name for f in dataclasses.fields(kind) if f.name != "lr"]
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise ValueError(f"inner optimizer '{name}' has no setting {', '.join(unknown)}; its settings: "
                         f"{', '.join(valid)}")
    return kind(lr=lr, **settings)


def model_of(optimizer: torch.optim.Optimizer, owner: str) -> Tuple[str, Dict[str, Any]]:
    """(name, settings without lr) of the inner optimizer that reproduces ``optimizer``'s update rule.

    Only what the update rule depends on is read; a rule the inner optimizers cannot reproduce is refused with a
    one-line error rather than modelled as something else.
    """
    group = optimizer.param_groups[0]
    kind = type(optimizer)
    unsupported = [flag for flag in ("maximize", "amsgrad") if group.get(flag)]
    if kind is torch.optim.SGD and not unsupported:
        if group["momentum"] == 0:
            return "sgd", {"weight_decay": group["weight_decay"]}
        return "momentum", {key: group[key] for key in ("momentum", "dampening", "nesterov", "weight_decay")}
    if kind in (torch.optim.Adam, torch.optim.AdamW) and not unsupported:
        decoupled = kind is torch.optim.AdamW or bool(group.get("decoupled_weight_decay"))
        return ("adamw" if decoupled else "adam"), {
            "betas": tuple(float(b) for b in group["betas"]), "eps": group["eps"], "weight_decay": group["weight_decay"]}
    what = f"{kind.__name__}" + (f" with {', '.join(unsupported)}" if unsupported else "")
    raise ValueError(f"{owner}: cannot model the inner optimizer {what} (it models torch.optim.SGD with or without "
                     f"momentum, Adam and AdamW); pass a method object that says what to model, e.g. "
                     f"bilevel.methods.Unroll(optimizer='sgd', lr=...)")
