"""The hypergradient the original AutoLoRA code computes: implicit differentiation with H^-1 replaced by I."""
from __future__ import annotations

from dataclasses import dataclass

from ..autodiff import finite_difference_mixed_product, loss_gradients
from ..validation import require_positive
from .base import HypergradientMethod, HypergradientResult, register


@register("identity_implicit")
@dataclass
class IdentityImplicit(HypergradientMethod):
    """Implicit-function hypergradient with the inverse inner Hessian replaced by the identity.

    Around the given (already updated) inner parameters w':

        v = grad_w f(w', x)
        d f / dx ~= grad_x f(w', x) - [grad_x g(w' + e v, x) - grad_x g(w' - e v, x)] / (2e),  e = epsilon/||v||

    This is what the AutoLoRA reference code obtains from its library's "darts" setting (no inner learning rate,
    perturbation around the updated weights). Kept to reproduce that behaviour; compared with the exact one-step
    unroll its second-order term is larger by about 1/eta. Unlike that library, the weights are never perturbed in
    place, so they do not drift. Cost: three forward+backward passes.
    """

    epsilon: float = 0.01

    def __post_init__(self):
        require_positive("IdentityImplicit", epsilon=self.epsilon)

    def compute(self, inner_loss, outer_loss, inner_params, outer_params, inner_batch, outer_batch, state=None):
        outer, (grad_x, v) = loss_gradients(outer_loss, inner_params, outer_params, outer_batch,
                                            (outer_params, inner_params))
        mixed, e = finite_difference_mixed_product(inner_loss, inner_params, outer_params, inner_batch, v, self.epsilon)
        grads = {k: grad_x[k] - mixed[k] for k in grad_x}
        return HypergradientResult(grads, {"gradient_evaluations": 3, "perturbation": e,
                                           "outer_loss": outer})
