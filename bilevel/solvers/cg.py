"""Conjugate gradient for symmetric positive-definite systems, on parameter dicts."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .. import params as P
from ..validation import require_positive, require_positive_integer, warn_caller
from .base import SolveInfo


@dataclass
class ConjugateGradientSolver:
    """Solves (A + damping I) x = b by CG, stopping when ||r|| <= tol ||b|| or after ``iterations`` steps.

    A direction with non-positive curvature p^T A p <= 0 means A is not positive definite (a saddle or a maximum
    of the inner problem); CG stops there with a warning and returns its iterate so far. Inner products are
    accumulated in float32 or wider.
    """

    iterations: int = 20
    tol: float = 1e-10
    damping: float = 0.0

    def __post_init__(self):
        require_positive_integer("ConjugateGradient", iterations=self.iterations)
        require_positive("ConjugateGradient", tol=self.tol)
        if self.damping < 0:
            raise ValueError(f"ConjugateGradient: damping must be >= 0, got {self.damping!r}")

    def __call__(self, matvec, b, x0=None):
        def operator(v):
            product = matvec(v)
            return P.add(product, v, self.damping) if self.damping else product

        b_norm = float(P.norm(b))
        if not math.isfinite(b_norm):  # hand the NaN on instead of hiding it behind a zero solution
            return dict(b), SolveInfo(0, 0, math.nan, False)
        if b_norm == 0:
            return P.zeros_like(b), SolveInfo(0, 0, 0.0, True)
        x = P.zeros_like(b) if x0 is None else dict(x0)
        matvecs = 0
        if x0 is None:
            r = dict(b)
        else:
            r, matvecs = P.sub(b, operator(x)), 1
        p, rr = dict(r), P.dot(r, r)
        iteration = 0
        while float(rr) ** 0.5 > self.tol * b_norm and iteration < self.iterations:
            ap = operator(p)
            matvecs += 1
            curvature = P.dot(p, ap)
            if curvature <= 0:
                # one text whatever the numbers, so Python's default filter shows it once per call site, not per step
                warn_caller("ConjugateGradient: non-positive curvature p^T H p <= 0; the inner Hessian is not positive "
                            "definite here (the inner parameters are not at a minimum). Returning the current iterate; "
                            "add damping larger than minus the Hessian's most negative eigenvalue, or train the inner "
                            "level closer to its optimum.")
                break
            step = rr / curvature
            x = P.add(x, p, step)
            r = P.add(r, ap, -step)
            rr_new = P.dot(r, r)
            p = P.add(r, p, rr_new / rr)
            rr = rr_new
            iteration += 1
        residual = float(rr) ** 0.5 / b_norm
        return x, SolveInfo(iteration, matvecs, residual, residual <= self.tol)
