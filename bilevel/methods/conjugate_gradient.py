"""Implicit differentiation with a conjugate-gradient solve of the inner Hessian system."""
from __future__ import annotations

from dataclasses import dataclass

from ..solvers import ConjugateGradientSolver
from .base import register
from .implicit import ImplicitMethod


@register("cg", "conjugate_gradient")
@dataclass
class ConjugateGradient(ImplicitMethod):
    """Solves (H + damping I) q = grad_w f by CG to relative tolerance ``tol`` within ``iterations`` products.

    No step size enters CG, so none can be wrong: the solution does not depend on any inner learning rate. CG warns
    and stops on non-positive curvature; ``damping`` > 0 regularises a Hessian that is not positive definite.
    ``warm_start=True`` starts each solve from the previous solution (kept in the method state).
    """

    main_count = "iterations"

    iterations: int = 20
    tol: float = 1e-10
    damping: float = 0.0
    warm_start: bool = False

    def __post_init__(self):
        self.make_solver()  # validates the settings

    def make_solver(self):
        return ConjugateGradientSolver(self.iterations, self.tol, self.damping)
