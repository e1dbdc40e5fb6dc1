"""Implicit differentiation with a dense Hessian solve: the reference for small problems."""
from __future__ import annotations

from dataclasses import dataclass

from ..solvers import DenseSolver
from .base import register
from .implicit import ImplicitMethod


@register("exact", "dense")
@dataclass
class Exact(ImplicitMethod):
    """Builds the inner Hessian from n Hessian-vector products and solves with ``torch.linalg.solve``.

    Exact to rounding at an inner optimum; for problems up to ``max_size`` inner parameters.
    """

    damping: float = 0.0
    max_size: int = 5000

    def __post_init__(self):
        self.make_solver()  # validates the settings

    def make_solver(self):
        return DenseSolver(self.damping, self.max_size)
