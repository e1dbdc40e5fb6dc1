"""Reverse-mode differentiation through K differentiable inner optimizer steps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from .. import params as P
from ..inner_optimizers import make_inner_optimizer, model_of
from ..autodiff import loss_gradients, per_step_batches
from ..validation import require_positive, require_positive_integer
from .base import HypergradientMethod, HypergradientResult, learning_rate_of, register


@register("unroll", "reverse")
@dataclass
class Unroll(HypergradientMethod):
    """K differentiable steps from the given inner parameters, then backpropagation through all of them.

    With plain SGD, w_{t+1} = w_t - lr grad_w g(w_t, x; b_t), and d f(w_K, x)/dx follows the recursion
    dw_{t+1}/dx = (I - lr H_t) dw_t/dx - lr d^2 g/dw dx. ``steps=1`` is the one-step unroll (what DARTS' finite
    difference approximates). ``optimizer`` is "sgd", "momentum", "adam" or "adamw" (torch.optim semantics), with its
    extra settings in ``optimizer_settings``; left unset, an Engine takes type, learning rate and settings from its
    live inner optimizer (the moments start at zero: the live optimizer's are not carried), and a direct call models
    SGD. ``inner_batch`` is one batch reused every step, or :class:`~bilevel.StepBatches` with one batch per step.
    Cost: K forward+backward passes with graphs kept, then one backward through all of them; memory grows linearly
    in K.
    """

    needs_second_derivatives = True
    main_count = "steps"
    inner_lr = "lr"

    steps: int = 1
    lr: Optional[float] = None
    optimizer: Optional[str] = None
    optimizer_settings: Optional[Dict[str, Any]] = None

    def __post_init__(self):
        require_positive_integer("Unroll", steps=self.steps)
        if self.lr is not None:
            require_positive("Unroll", lr=self.lr)
        if self.optimizer is not None and self.optimizer_settings is None:
            self.optimizer_settings = {}  # a type given without settings: that type's defaults
        if self.optimizer_settings is not None and not isinstance(self.optimizer_settings, dict):
            raise ValueError(f"Unroll: optimizer_settings must be a dict, got {self.optimizer_settings!r}")
        try:  # unknown or invalid settings fail now, not at the first hypergradient
            self._inner_optimizer(1.0 if self.lr is None else self.lr)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Unroll: {error}") from None

    @classmethod
    def inner_optimizer_settings(cls):
        return ("lr", "optimizer", "optimizer_settings")

    @classmethod
    def settings_from_inner_optimizer(cls, optimizer, wanted):
        known = {"lr": learning_rate_of(optimizer, "unroll")} if "lr" in wanted else {}
        if "optimizer" in wanted:  # the type and its settings go together: a fixed type keeps its own settings
            name, settings = model_of(optimizer, "unroll")
            known.update(optimizer=name, optimizer_settings=settings)
        return known

    def _inner_optimizer(self, lr: float):
        return make_inner_optimizer(self.optimizer or "sgd", lr, **(self.optimizer_settings or {}))

    def compute(self, inner_loss, outer_loss, inner_params, outer_params, inner_batch, outer_batch, state=None):
        batches = per_step_batches(inner_batch, self.steps)
        optimizer = self._inner_optimizer(self.lr)
        weights, opt_state = inner_params, optimizer.init(inner_params)
        first = None
        for batch in batches:
            value, (step,) = loss_gradients(inner_loss, weights, outer_params, batch, (weights,), create_graph=True)
            if first is None:
                first = (value, P.detached(step))
            weights, opt_state = optimizer.update(step, opt_state, weights)
        outer, (grads,) = loss_gradients(outer_loss, weights, outer_params, outer_batch, (outer_params,))
        return HypergradientResult(grads, {"gradient_evaluations": self.steps + 1, "hvp_estimate": self.steps,
                                           "outer_loss": outer, "inner_loss": first[0]}, inner_grads=first[1])
