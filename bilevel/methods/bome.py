"""BOME: a first-order value-function method with a dynamic barrier (Liu, Ye, Wright, Stone and Liu, NeurIPS 2022)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .. import params as P
from ..autodiff import loss_gradients
from ..validation import require_decay_exponent, require_positive, require_positive_integer
from .base import HypergradientMethod, HypergradientResult, register


@register("bome")
@dataclass
class BOME(HypergradientMethod):
    """BOME (Liu, Ye, Wright, Stone and Liu, "BOME! Bilevel Optimization Made Easy: A Simple First-Order Approach",
    NeurIPS 2022, Algorithm 1): min f(w, x) subject to q(w, x) = g(w, x) - g*(x) <= 0, with first derivatives only.
    The Engine's inner parameters are the paper's w^T, which estimates argmin g for the value g*(x) ~ g(w^T, x)
    (stepped by the inner optimizer); the paper's w, which moves with x, is kept in the state (w_0 = w^T). At call t
    (t = 1, 2, ...):

        grad q  = (grad_w g(w, x),  grad_x g(w, x) - grad_x g(w^T, x))          (w^T held fixed)
        lambda  = max(eta ||grad q||^2 - <grad f(w, x), grad q>, 0) / ||grad q||^2     (0 where grad q = 0)
        d       = grad f(w, x) + lambda grad q
        w      <- w - xi_t d_w,     d_x s_t returned,     xi_t = step s_t,   s_t = min(1, decay_start / t)^decay

    lambda is the smallest multiplier for which a step along -d lowers q at least as fast as eta ||grad q||^2; eta = 0.5
    is the paper's default. ``step=None`` takes the inner optimizer's live learning rate (the benchopt benchmark steps
    w with the inner step; the paper uses one step xi for w and x). The outer optimizer makes the x step; with
    ``decay`` set, the returned direction is scaled by s_t so that an outer SGD at a constant rate takes the same
    decaying schedule as w.

    Why a decaying step: at the solution q = 0 and grad q = 0, so no finite lambda satisfies the KKT conditions
    (the constraint qualification fails) and lambda must grow as w approaches w*(x). The paper's bound on the KKT
    residual has a term that grows with xi and one that shrinks with xi K for K steps, so it converges only with a
    step that shrinks: a constant xi stops O(xi) from x* (relative error 0.13 to 0.16 on the test quadratic, where
    the iterates enter a cycle). Measured on that quadratic, ``decay=1, decay_start=10`` gives 3e-3 after 1e3 steps,
    2e-4 after 1e4 and 2e-6 after 1e6: the rate is sublinear, see docs/methods.md.

    Where this differs from the paper: the paper restarts its T inner steps from w at every outer step; here w^T is
    warm-started, continuing from the previous outer step (the Engine's ``inner_steps`` are the paper's T, 10 in its
    experiments), so the paper's exp(-T) error term fades as w^T tracks w*(x). The order is the paper's: w^T first,
    then w and x from directions taken at (w_k, x_k). Cost per call: 3 forward+backward passes (f and g at (w, x),
    g at (w^T, x)) besides the Engine's inner steps; no second derivatives.

    >>> Engine(inner, outer, method=BOME(eta=0.5, decay=1.0, decay_start=10))
    """

    inner_lr = "step"

    step: Optional[float] = None
    eta: float = 0.5
    decay: Optional[float] = None
    decay_start: int = 1

    def __post_init__(self):
        if self.step is not None:
            require_positive("BOME", step=self.step)
        require_positive("BOME", eta=self.eta)
        require_decay_exponent("BOME", decay=self.decay)
        require_positive_integer("BOME", decay_start=self.decay_start)

    def compute(self, inner_loss, outer_loss, inner_params, outer_params, inner_batch, outer_batch, state=None):
        calls = 1 if state is None else state["calls"] + 1
        w = {k: v.detach().clone() for k, v in inner_params.items()} if state is None else state["w"]
        at = P.detached(w, requires_grad=True)
        outer, (f_w, f_x) = loss_gradients(outer_loss, at, outer_params, outer_batch, (at, outer_params))
        _, (q_w, g_x) = loss_gradients(inner_loss, at, outer_params, inner_batch, (at, outer_params))
        _, (value_x,) = loss_gradients(inner_loss, inner_params, outer_params, inner_batch, (outer_params,))
        q_x = P.sub(g_x, value_x)
        squared = P.dot(q_w, q_w) + P.dot(q_x, q_x)
        along = P.dot(f_w, q_w) + P.dot(f_x, q_x)
        safe = torch.where(squared > 0, squared, torch.ones_like(squared))
        multiplier = torch.where(squared > 0, torch.clamp(self.eta * squared - along, min=0) / safe, 0.0)
        shrink = min(1.0, self.decay_start / calls) ** (self.decay or 0.0)
        moved = P.detached(P.add(w, P.add(f_w, q_w, multiplier), -self.step * shrink))
        grads = {k: shrink * (f_x[k] + multiplier * q_x[k]) for k in f_x}
        diagnostics = {"gradient_evaluations": 3, "multiplier": float(multiplier), "outer_loss": outer,
                       "constraint_gradient_norm": float(squared.sqrt()), "step_scale": shrink}
        return HypergradientResult(grads, diagnostics, {"w": moved, "calls": calls})
