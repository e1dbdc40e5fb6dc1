"""First-order approximation: the direct gradient of the outer loss, response Jacobian dropped."""
from __future__ import annotations

from dataclasses import dataclass

from ..autodiff import loss_gradients
from .base import HypergradientMethod, HypergradientResult, register


@register("first_order", "fo")
@dataclass
class FirstOrder(HypergradientMethod):
    """d f / dx ~= grad_x f(w, x): treats the inner solution as independent of x.

    Cost: one forward+backward pass of the outer loss. Exact only when the outer loss does not depend on w through
    x (DARTS' "first-order" variant, first-order MAML).
    """

    def compute(self, inner_loss, outer_loss, inner_params, outer_params, inner_batch, outer_batch, state=None):
        loss, (grads,) = loss_gradients(outer_loss, inner_params, outer_params, outer_batch, (outer_params,))
        return HypergradientResult(grads, {"gradient_evaluations": 1, "outer_loss": loss})
