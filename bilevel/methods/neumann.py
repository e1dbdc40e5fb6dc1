"""Implicit differentiation with a truncated Neumann series for the inverse Hessian."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..solvers import NeumannSolver
from .base import register
from .implicit import ImplicitMethod


@register("neumann")
@dataclass
class Neumann(ImplicitMethod):
    """H^-1 b ~= step * sum_{i<=K} (I - step H)^i b (Lorraine et al., 2020), K = ``iterations`` products.

    ``step=None`` (default) takes 1 / lambda_max(H) from ``power_iterations`` power-iteration products, which makes
    the series converge whenever H is positive definite; a fixed step must satisfy step < 2 / lambda_max. A series
    that blows up raises ``SolverDivergedError`` suggesting a smaller step.
    """

    main_count = "iterations"

    iterations: int = 50
    step: Optional[float] = None
    power_iterations: int = 20

    def __post_init__(self):
        self.make_solver()

    def make_solver(self):
        return NeumannSolver(self.iterations, self.step, self.power_iterations)
