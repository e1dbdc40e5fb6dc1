"""Truncated Neumann series for A x = b, with a step chosen from the largest eigenvalue of A."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .. import params as P
from ..validation import require_positive, require_positive_integer, warn_caller
from .base import SolveInfo, SolverDivergedError


def largest_eigenvalue(matvec, start, iterations: int = 20):
    """Power-iteration estimate of the largest-magnitude eigenvalue of a symmetric A; returns (value, vector)."""
    vector = P.scale(start, 1.0 / float(P.norm(start)))
    value = 0.0
    for _ in range(iterations):
        product = matvec(vector)
        value = float(P.dot(vector, product))
        size = float(P.norm(product))
        if size == 0 or not math.isfinite(size):
            break
        vector = P.scale(product, 1.0 / size)
    return value, vector


@dataclass
class NeumannSolver:
    """x = step * sum_{i<=K} (I - step A)^i b from K = ``iterations`` products; converges to A^-1 b when
    0 < step < 2 / lambda_max(A).

    With ``step=None`` the step is 1 / lambda_max estimated by ``power_iterations`` products (power iteration starting
    from b), so the series contracts at rate 1 - lambda_min / lambda_max. The reported residual is ||(I - step A)^K b||
    / ||b||, the exact residual of the series without its last term and, while the series contracts, a bound on the
    residual of x; it costs no extra product. A residual that grows means the step is too large or A has negative
    eigenvalues: it warns, and raises when the residual exceeds ``blowup`` times ||b||. ``converged`` means the
    residual reached ``tol``, as for CG (the series always runs its ``iterations`` terms).
    """

    iterations: int = 50
    step: Optional[float] = None
    power_iterations: int = 20
    blowup: float = 1e3
    tol: float = 1e-10

    def __post_init__(self):
        require_positive_integer("Neumann", iterations=self.iterations, power_iterations=self.power_iterations)
        require_positive("Neumann", tol=self.tol)
        if self.step is not None:
            require_positive("Neumann", step=self.step)

    def __call__(self, matvec, b, x0=None):
        b_norm = float(P.norm(b))
        if not math.isfinite(b_norm):  # a NaN right-hand side is not a divergence: hand it on
            return dict(b), SolveInfo(0, 0, math.nan, False)
        if b_norm == 0:
            return P.zeros_like(b), SolveInfo(0, 0, 0.0, True)
        step, matvecs = self.step, 0
        if step is None:
            top, _ = largest_eigenvalue(matvec, b, self.power_iterations)
            matvecs += self.power_iterations
            if not top > 0:
                raise SolverDivergedError(f"Neumann: the largest Hessian eigenvalue estimate is {top:.3g} <= 0, so no "
                                          "step makes the series converge; the inner level is not at a minimum")
            step = 1.0 / top
        term, total = dict(b), dict(b)
        for _ in range(self.iterations):
            term = P.add(term, matvec(term), -step)  # (I - step A)^i b
            total = P.add(total, term)
            matvecs += 1
        residual = float(P.norm(term)) / b_norm
        if not math.isfinite(residual) or residual > self.blowup:
            raise SolverDivergedError(f"Neumann: the series diverged (relative residual {residual:.3g} after "
                                      f"{self.iterations} terms with step {step:.3g}); pass a smaller step, "
                                      f"e.g. {self._safe_step(matvec, b, step)}")
        if residual > 1.0:
            warn_caller(f"Neumann: the residual grew to {residual:.3g} x ||b|| with step {step:.3g}; the step is "
                          "too large or the inner Hessian has negative eigenvalues; pass a smaller step")
        return P.scale(total, step), SolveInfo(self.iterations, matvecs, residual, residual <= self.tol)

    def _safe_step(self, matvec, b, step: float) -> str:
        """A step to suggest after a divergence: 1 / lambda_max estimated now (the series converges for steps below
        2 / lambda_max) when the step was given and that is smaller; else a quarter of the step, with the warning
        that a series diverging at small steps means an inner Hessian that is not positive definite."""
        if self.step is not None:
            top, _ = largest_eigenvalue(matvec, b, self.power_iterations)
            if top > 0 and 1.0 / top < step:
                return f"step={1.0 / top:.3g} (1 / the largest Hessian eigenvalue, {top:.3g}), or step=None"
        return (f"step={step / 4:.3g}; a series that diverges at small steps means the inner Hessian is not positive "
                "definite (the inner level is not at a minimum)")
