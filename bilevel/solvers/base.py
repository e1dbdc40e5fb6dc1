"""The shared signature of linear solvers: ``solver(matvec, b, x0=None) -> (x, SolveInfo)``."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SolveInfo:
    """How a solve went: iterations run, matrix-vector products used, relative residual ||A x - b|| / ||b||."""

    iterations: int
    matvecs: int
    residual: float
    converged: bool


class SolverDivergedError(RuntimeError):
    """An iterative solve blew up (non-finite or exploding residual)."""
