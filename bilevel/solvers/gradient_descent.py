"""Gradient descent on the quadratic 0.5 x^T A x - b^T x, from a warm start: AmIGO's linear solver."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .. import params as P
from ..validation import require_positive, require_positive_integer
from .base import SolveInfo, SolverDivergedError


@dataclass
class GradientDescentSolver:
    """x_{m+1} = x_m - step (A x_m - b) for ``iterations`` products, from ``x0`` (zero without one).

    Converges to A^-1 b when 0 < step < 2 / lambda_max(A); from zero it is the Neumann series. Unlike the Neumann
    solver it starts where it is told, which is what a warm start across outer steps needs (AmIGO). The reported
    residual ||A x_{M-1} - b|| / ||b|| is that of the iterate before the last step (it costs no extra product); a
    non-finite or exploding one raises ``SolverDivergedError`` suggesting a smaller step. ``converged`` means that
    residual reached ``tol``, as for CG (all ``iterations`` steps run).
    """

    iterations: int = 10
    step: float = 0.1
    blowup: float = 1e3
    tol: float = 1e-10

    def __post_init__(self):
        require_positive_integer("GradientDescentSolver", iterations=self.iterations)
        require_positive("GradientDescentSolver", step=self.step, tol=self.tol)

    def __call__(self, matvec, b, x0=None):
        b_norm = float(P.norm(b))
        if not math.isfinite(b_norm):  # hand the NaN on instead of hiding it
            return dict(b), SolveInfo(0, 0, math.nan, False)
        x = P.zeros_like(b) if x0 is None else dict(x0)
        residual = 0.0
        for _ in range(self.iterations):
            r = P.sub(matvec(x), b)
            x = P.add(x, r, -self.step)
            residual = float(P.norm(r)) / b_norm if b_norm > 0 else float(P.norm(r))
        if not math.isfinite(residual) or residual > self.blowup:
            raise SolverDivergedError(f"GradientDescentSolver: diverged (relative residual {residual:.3g} after "
                                      f"{self.iterations} steps of {self.step:.3g}); pass a smaller step, e.g. "
                                      f"step={self.step / 4:.3g}")
        return x, SolveInfo(self.iterations, self.iterations, residual, residual <= self.tol)
