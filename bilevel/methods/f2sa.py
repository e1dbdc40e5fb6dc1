"""F2SA: a fully first-order penalty method with a second copy of the inner variables (Kwon et al., ICML 2023)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .. import params as P
from ..autodiff import loss_gradients
from ..validation import require_positive, require_positive_integer
from .base import HypergradientMethod, HypergradientResult, register


@register("f2sa")
@dataclass
class F2SA(HypergradientMethod):
    """F2SA (Kwon, Kwon, Wright and Nowak, "A fully first-order method for stochastic bilevel optimization", ICML
    2023, Algorithm 1): the gradient of the penalty L_lambda(x, y) = f(x, y) + lambda (g(x, y) - min_z g(x, z)),
    which needs first derivatives only. The Engine's inner parameters are the paper's z (min_z g, stepped by the
    inner optimizer); the paper's y, a second copy that minimises f + lambda g, is kept in the state (y_0 = z_0).
    At outer step k (k = 0, 1, ...), with multiplier lambda_k = multiplier + multiplier_growth * k:

        y <- y - alpha_k (grad_y f(x, y) + lambda_k grad_y g(x, y))     ``steps`` times, alpha_k = lr / lambda_k
        h_k = grad_x f(x, y) + lambda_k (grad_x g(x, y) - grad_x g(x, z))   (returned as the hypergradient)

    and lambda_{k+1} = lambda_k + multiplier_growth (the paper's lambda_{k+1} = lambda_k + delta_k with a constant
    delta). For a fixed lambda, h is the gradient of min_y L_lambda when y and z are converged, and it differs from
    the implicit hypergradient by O(1/lambda): the outer iterates reach x* only as lambda grows. The y step alpha_k =
    lr / lambda_k makes the y-problem (curvature about lambda_k times g's) as stable as the inner one; ``lr=None``
    takes the inner optimizer's live learning rate. The paper gives rates for its schedules, not constants: the
    defaults lambda_0 = 10, no growth and one y step per outer step are ours.

    Where this differs from the paper: it steps z and y T times each on fresh samples at x_k; here z gets the Engine's
    ``inner_steps`` real steps (any optimizer) and y gets ``steps`` steps, all on the batches the Engine hands over
    (the last inner step's batch and one outer batch). The order (z and y first, then x) is the paper's. On the first
    call y_0 is a copy of z after that step's inner steps and takes no step, so that afterwards y and z take their
    steps at the same x (with ``steps`` = ``inner_steps`` and SGD at lr, y and z stay in step; a y one step behind z
    would carry lambda times that offset into h). A growing multiplier rescales lambda (y - z) between calls, a bias
    in h of about multiplier_growth / lambda relative to one y step's contraction: grow it slowly.
    Cost per call: 2 * steps + 3 forward+backward passes, no second derivatives.
    """

    main_count = "steps"
    inner_lr = "lr"

    lr: Optional[float] = None
    multiplier: float = 10.0
    multiplier_growth: float = 0.0
    steps: int = 1

    def __post_init__(self):
        if self.lr is not None:
            require_positive("F2SA", lr=self.lr)
        require_positive("F2SA", multiplier=self.multiplier)
        if not isinstance(self.multiplier_growth, (int, float)) or not self.multiplier_growth >= 0:
            raise ValueError(f"F2SA: multiplier_growth must be a number >= 0, got {self.multiplier_growth!r}")
        require_positive_integer("F2SA", steps=self.steps)

    def compute(self, inner_loss, outer_loss, inner_params, outer_params, inner_batch, outer_batch, state=None):
        calls = 0 if state is None else state["calls"]
        penalty = self.multiplier + self.multiplier_growth * calls
        fixed_x = P.detached(outer_params)
        # y_0 = z after this outer step's inner steps; y steps from the next call on, in step with z (see above)
        y = {k: v.detach().clone() for k, v in inner_params.items()} if state is None else state["y"]
        for _ in range(0 if state is None else self.steps):
            y = P.detached(y, requires_grad=True)
            _, (outer_y,) = loss_gradients(outer_loss, y, fixed_x, outer_batch, (y,))
            _, (inner_y,) = loss_gradients(inner_loss, y, fixed_x, inner_batch, (y,))
            y = P.detached(P.add(y, P.add(outer_y, inner_y, penalty), -self.lr / penalty))
        at = P.detached(y, requires_grad=True)  # a loss that ignores x still has a graph
        outer, (outer_x,) = loss_gradients(outer_loss, at, outer_params, outer_batch, (outer_params,))
        _, (at_y,) = loss_gradients(inner_loss, at, outer_params, inner_batch, (outer_params,))
        _, (at_z,) = loss_gradients(inner_loss, inner_params, outer_params, inner_batch, (outer_params,))
        grads = {k: outer_x[k] + penalty * (at_y[k] - at_z[k]) for k in outer_x}
        diagnostics = {"gradient_evaluations": 2 * self.steps + 3, "multiplier": penalty, "outer_loss": outer}
        return HypergradientResult(grads, diagnostics, {"y": y, "calls": calls + 1})
