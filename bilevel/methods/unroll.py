"""Reverse-mode differentiation through K differentiable inner optimizer steps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

from .. import params as P
from ..inner_optimizers import INNER_OPTIMIZERS, make_inner_optimizer
from ..passes import loss_gradients
from ..validation import require_positive, require_positive_integer
from .base import HypergradientMethod, HypergradientResult, register


@register("unroll", "reverse")
@dataclass
class Unroll(HypergradientMethod):
    """K differentiable steps from the given inner parameters, then backpropagation through all of them.

    With plain SGD, w_{t+1} = w_t - lr grad_w g(w_t, x; b_t), and d f(w_K, x)/dx follows the recursion
    dw_{t+1}/dx = (I - lr H_t) dw_t/dx - lr d^2 g/dw dx. ``steps=1`` is the one-step unroll (what DARTS' finite
    difference approximates). ``optimizer`` is "sgd", "momentum" or "adam" (torch.optim semantics), with its extra
    settings in ``optimizer_settings``. ``inner_batch`` may be a list with one batch per step (a tuple or dict is one
    batch reused every step). Cost: K forward+backward passes with graphs kept, then one backward through all of
    them; memory grows linearly in K.
    """

    needs_second_derivatives = True

    steps: int = 1
    lr: float = 0.1
    optimizer: str = "sgd"
    optimizer_settings: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        require_positive_integer("Unroll", steps=self.steps)
        require_positive("Unroll", lr=self.lr)
        if self.optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f"Unroll: unknown optimizer '{self.optimizer}'; choose one of {', '.join(INNER_OPTIMIZERS)}")

    def compute(self, inner_loss, outer_loss, inner_params, outer_params, inner_batch, outer_batch, state=None):
        batches = _per_step_batches(inner_batch, self.steps)
        optimizer = make_inner_optimizer(self.optimizer, self.lr, **self.optimizer_settings)
        weights, opt_state = inner_params, optimizer.init(inner_params)
        first = None
        for batch in batches:
            value, (step,) = loss_gradients(inner_loss, weights, outer_params, batch, (weights,), create_graph=True)
            if first is None:
                first = (value, P.detached(step))
            weights, opt_state = optimizer.update(step, opt_state, weights)
        outer, (grads,) = loss_gradients(outer_loss, weights, outer_params, outer_batch, (outer_params,))
        return HypergradientResult(grads, {"gradient_evaluations": self.steps + 1, "outer_loss": outer,
                                           "inner_loss": first[0]}, inner_grads=first[1])


def _per_step_batches(inner_batch, steps):
    if isinstance(inner_batch, list):
        if len(inner_batch) != steps:
            raise ValueError(f"Unroll: inner_batch is a list of {len(inner_batch)} batches but steps={steps}; pass one "
                             "batch per step, or a single batch as a tuple or dict to reuse it")
        return inner_batch
    return [inner_batch] * steps
