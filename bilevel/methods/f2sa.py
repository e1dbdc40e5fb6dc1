"""F2SA: a fully first-order penalty method with a second copy of the inner variables (Kwon et al., ICML 2023)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch

from .. import params as P
from ..autodiff import loss_gradients, per_step_batches
from ..solvers.base import SolverDivergedError
from ..validation import require_decay_exponent, require_positive, require_positive_integer
from .base import HypergradientMethod, HypergradientResult, register

Y_STEPS = ("lr/multiplier", "lr")
BLOWUP = 1e6  # |y - z| beyond this times (|z| + 1): y's steps diverge


@register("f2sa")
@dataclass
class F2SA(HypergradientMethod):
    """F2SA (Kwon, Kwon, Wright and Nowak, "A fully first-order method for stochastic bilevel optimization", ICML
    2023, Algorithm 1): the gradient of the penalty L_lambda(x, y) = f(x, y) + lambda (g(x, y) - min_z g(x, z)),
    which needs first derivatives only. The Engine's inner parameters are the paper's z (min_z g, stepped by the
    inner optimizer); the paper's y, a second copy that minimises f + lambda g, is kept in the state (y_0 = z_0).
    At outer step k (k = 0, 1, ...), with multiplier lambda_k (lambda_0 = multiplier,
    lambda_{k+1} = lambda_k + multiplier_growth * (k+1)^-multiplier_growth_decay):

        y <- y - alpha_k (grad_y f(x, y) + lambda_k grad_y g(x, y))     ``steps`` times
        h_k = grad_x f(x, y) + lambda_k (grad_x g(x, y) - grad_x g(x, z))   (returned as the hypergradient)

    with the y step alpha_k = lr / lambda_k * (k+1)^-decay (``y_step="lr/multiplier"``, the default) or
    alpha_k = lr * (k+1)^-decay (``y_step="lr"``, the paper's alpha_k, whose theorems need alpha_k lambda_k bounded:
    grow lambda slower than alpha decays). For a fixed lambda, h is the gradient of min_y L_lambda when y and z are
    converged, and it differs from the implicit hypergradient by O(1/lambda): the outer iterates reach x* only as
    lambda grows. The default y step makes the y-problem as stable as the inner one whatever lambda is, as long as its
    curvature is about lambda_k times g's (f's own curvature small next to it); a y that diverges raises
    ``SolverDivergedError``; ``lr=None`` takes the inner optimizer's live learning rate. The paper gives rates for its
    schedules (stochastic case: alpha_k ~ k^-5/7, lambda_k ~ k^1/7), not constants: the defaults lambda_0 = 10, no
    growth, constant steps and one y step per outer step are ours.

    Where this differs from the paper: it steps z and y T times each on fresh samples at x_k; here z gets the Engine's
    ``inner_steps`` real steps (any optimizer) and y gets ``steps`` steps. By default they all use the batches the
    Engine hands over (the last inner step's batch and one outer batch); with ``fresh_batches=True`` the method asks
    the Engine for ``steps`` + 1 fresh batches of each level (:class:`~bilevel.StepBatches` in the functional API):
    y step t uses the t-th of each, h the last (one inner batch for both of h's g terms: their difference is then
    free of the batch's noise where y = z). ``h_batches=2`` (with ``fresh_batches``) draws one more inner batch and
    takes grad_x g(x, y) and grad_x g(x, z) on a batch each, as the benchopt benchmark's F2SA does: each term's batch
    noise then reaches h multiplied by lambda, and it is the way to reproduce that code's iterates. The order (z and
    y first, then x) is the paper's, and so is the start: the Engine takes y_0 = z_0 before its first inner steps
    (:meth:`initial_state`), so y and z step in lockstep from the first iteration (with ``steps`` = ``inner_steps``
    and SGD at lr they stay in step; a y steps ahead of or behind z would carry lambda times that offset into h).
    Under ``EngineConfig(reuse_inner_gradient=True)``, where the Engine calls the method before z's steps, y skips
    its steps on the first call, so the two stay in lockstep in that order too. Without state (the functional API)
    y_0 is a copy of z as given and y takes its steps. A growing multiplier rescales lambda (y - z) between calls, a
    bias in h of about the growth / lambda relative to one y step's contraction: grow it slowly.
    Cost per call: 2 * steps + 3 forward+backward passes, no second derivatives.
    """

    main_count = "steps"
    inner_lr = "lr"

    lr: Optional[float] = None
    multiplier: float = 10.0
    multiplier_growth: float = 0.0
    multiplier_growth_decay: float = 0.0
    steps: int = 1
    decay: Optional[float] = None
    y_step: str = "lr/multiplier"
    fresh_batches: bool = False
    h_batches: int = 1

    def __post_init__(self):
        if self.lr is not None:
            require_positive("F2SA", lr=self.lr)
        require_positive("F2SA", multiplier=self.multiplier)
        for key in ("multiplier_growth", "multiplier_growth_decay"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"F2SA: {key} must be a number >= 0, got {value!r}")
        require_positive_integer("F2SA", steps=self.steps)
        require_decay_exponent("F2SA", decay=self.decay)
        if self.y_step not in Y_STEPS:
            raise ValueError(f"F2SA: y_step must be one of {', '.join(Y_STEPS)}, got {self.y_step!r}")
        if not isinstance(self.fresh_batches, bool):
            raise ValueError(f"F2SA: fresh_batches must be True or False, got {self.fresh_batches!r}")
        if type(self.h_batches) is not int or self.h_batches not in (1, 2):
            raise ValueError(f"F2SA: h_batches must be 1 (one inner batch for both g terms of h) or 2 (a batch "
                             f"each), got {self.h_batches!r}")
        if self.h_batches == 2 and not self.fresh_batches:
            raise ValueError("F2SA: h_batches=2 takes h's two inner batches fresh; pass fresh_batches=True")

    def batches_per_call(self) -> tuple[int, int]:
        if not self.fresh_batches:
            return super().batches_per_call()
        return self.steps + self.h_batches, self.steps + 1

    def initial_state(self, inner_params, outer_params):
        """y_0 = z_0, taken before the Engine's first inner steps."""
        return {"y": {k: v.detach().clone() for k, v in inner_params.items()}, "calls": 0,
                "multiplier": self.multiplier}

    def compute(self, inner_loss, outer_loss, inner_params, outer_params, inner_batch, outer_batch, state=None):
        # Lockstep: y takes a round of steps on every call in which z has had one. A state from initial_state
        # (calls 0) meets z unmoved when the Engine calls the method before z's steps (reuse_inner_gradient): y waits
        # then. Without state (the functional API) y_0 = z as given, and y takes its steps.
        from_initial_state = state is not None and state["calls"] == 0
        state = self.initial_state(inner_params, outer_params) if state is None else state
        calls, penalty = state["calls"], state["multiplier"]
        step_y = not from_initial_state or not all(torch.equal(state["y"][k], v.detach())
                                                   for k, v in inner_params.items())
        # StepBatches: one per y step, then h's (one for both g terms, or one each); a plain batch: every step
        inner_batches = per_step_batches(inner_batch, self.steps + self.h_batches, "F2SA",
                                         f"inner: {self.steps} y steps and {self.h_batches} for h")
        inner_steps, at_y_batch, at_z_batch = inner_batches[:self.steps], inner_batches[self.steps], inner_batches[-1]
        *outer_steps, outer_last = per_step_batches(outer_batch, self.steps + 1, "F2SA",
                                                    f"outer: {self.steps} y steps and 1 for h")
        alpha = self.lr * (calls + 1) ** -(self.decay or 0.0) / (penalty if self.y_step == "lr/multiplier" else 1.0)
        fixed_x = P.detached(outer_params)

        def y_step(y, batches):
            """One step of y on f + lambda g; returns the new y and the two losses at the old one."""
            inner_b, outer_b = batches
            y = P.detached(y, requires_grad=True)
            outer_value, (outer_y,) = loss_gradients(outer_loss, y, fixed_x, outer_b, (y,))
            inner_value, (inner_y,) = loss_gradients(inner_loss, y, fixed_x, inner_b, (y,))
            return (P.detached(P.add(y, P.add(outer_y, inner_y, penalty), -alpha)),
                    torch.stack([outer_value.double(), inner_value.double()]))

        plan = list(zip(inner_steps, outer_steps)) if step_y else []
        y, losses = state["y"], []
        for batches in plan:
            y, values = y_step(y, batches)
            losses.append(values)
        if plan:
            replay = lambda k: functools.reduce(lambda y_, b: y_step(y_, b)[0], plan[:k], state["y"])  # noqa: E731
            self._check_y(y, inner_params, alpha, penalty, calls, losses, replay)
        at = P.detached(y, requires_grad=True)  # a loss that ignores x still has a graph
        outer, (outer_x,) = loss_gradients(outer_loss, at, outer_params, outer_last, (outer_params,))
        _, (at_y,) = loss_gradients(inner_loss, at, outer_params, at_y_batch, (outer_params,))
        _, (at_z,) = loss_gradients(inner_loss, inner_params, outer_params, at_z_batch, (outer_params,))
        grads = {k: outer_x[k] + penalty * (at_y[k] - at_z[k]) for k in outer_x}
        diagnostics = {"gradient_evaluations": 2 * len(plan) + 3, "multiplier": penalty, "y_step": alpha,
                       "outer_loss": outer}
        grown = penalty + self.multiplier_growth * (calls + 1) ** -self.multiplier_growth_decay
        return HypergradientResult(grads, diagnostics, {"y": y, "calls": calls + 1, "multiplier": grown})

    def _check_y(self, y, z, alpha: float, penalty: float, calls: int, losses: list, replay) -> None:
        """Refuse a y whose steps diverge: the step alpha times the curvature of f + lambda g must stay below 2, and
        the default lr / lambda ensures that only while f's curvature is small next to lambda times g's. A loss that
        is not finite at a y still within bounds (the first of the call, which the last check accepted, or a later
        one near z) is the loss's fault, not the step's: its NaN flows on, and the caller's check names the loss.
        ``losses``: the two losses of each y step; ``replay(k)``: the y before step k, recomputed (on this failure
        path only, so that the steps themselves keep no copies and take no extra passes)."""
        size, final = float(P.norm(P.detached(z))), float(P.norm(P.sub(y, P.detached(z))))
        out_of_bounds = lambda gap: not math.isfinite(gap) or gap > BLOWUP * (size + 1.0)  # noqa: E731
        if not out_of_bounds(final):
            return
        first_bad = next((k for k, values in enumerate(losses) if not bool(torch.isfinite(values).all())), None)
        if first_bad == 0 or (first_bad is not None
                              and not out_of_bounds(float(P.norm(P.sub(replay(first_bad), P.detached(z)))))):
            return
        raise SolverDivergedError(
            f"F2SA: the second inner copy y diverged at call {calls + 1} (|y - z| = {final:.3g}, |z| = {size:.3g}): "
            f"its step {alpha:.3g} is too large for the curvature of f + {penalty:.3g} g; pass a smaller lr, e.g. "
            f"lr={self.lr / 4:.3g}" + (", or a larger multiplier" if self.y_step == "lr/multiplier" else ""))

