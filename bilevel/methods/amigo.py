"""AmIGO: implicit differentiation whose linear solve is warm-started from the previous outer step (Arbel & Mairal)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..solvers import ConjugateGradientSolver, GradientDescentSolver
from ..validation import require_positive, require_positive_integer
from .base import register
from .implicit import ImplicitMethod

SOLVERS = ("gd", "cg")


@register("amigo")
@dataclass
class AmIGO(ImplicitMethod):
    """AmIGO (Arbel and Mairal, "Amortized implicit differentiation for stochastic bilevel optimization", ICLR 2022):
    both inner problems are warm-started from the previous outer step and solved only a few steps further.

    Outer step k: the inner parameters continue from where step k-1 left them (the Engine's ``inner_steps`` real
    inner steps: the paper's T steps of its inner algorithm A_k), then the linear system H q = grad_w f at the new
    point gets ``iterations`` = M steps of the paper's algorithm B_k, started from q_{k-1} (q_0 = 0):

        gd:  q_{m+1} = q_m - step (H q_m - grad_w f)       (AmIGO-GD; the paper writes z = -q)
        cg:  up to M conjugate-gradient iterations from q_{k-1}   (AmIGO-CG; stops at relative residual 1e-10)

    and the hypergradient is grad_x f - (d^2 g / dx dw) q_k. The paper treats T and M as parameters; M = 10 is our
    default. ``step=None`` takes the inner optimizer's live learning rate (H is the inner loss's curvature, so a step
    that is stable for the inner problem is stable here). The paper draws a fresh minibatch for every step of B_k;
    here the M steps share the batch the Engine hands over (the last inner step's), so with minibatches q_k solves
    that batch's system and the warm start averages across batches.
    Cost per call: one outer and one inner forward+backward, M Hessian-vector products, one mixed product.
    """

    main_count = "iterations"
    inner_lr = "step"
    warm_start = True

    solver: str = "gd"
    iterations: int = 10
    step: Optional[float] = None

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"AmIGO: solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        require_positive_integer("AmIGO", iterations=self.iterations)
        if self.step is not None:
            require_positive("AmIGO", step=self.step)

    def missing_settings(self) -> list[str]:
        """CG takes no step: only AmIGO-GD needs the inner learning rate."""
        return super().missing_settings() if self.solver == "gd" else []

    def make_solver(self):
        if self.solver == "cg":
            return ConjugateGradientSolver(self.iterations)
        return GradientDescentSolver(self.iterations, self.step)
