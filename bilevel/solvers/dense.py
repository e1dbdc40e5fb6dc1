"""Direct solve with the dense matrix, built column by column from matrix-vector products (small problems only)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import params as P
from ..validation import require_positive_integer
from .base import SolveInfo


@dataclass
class DenseSolver:
    """Builds A from n products with the unit vectors and solves (A + damping I) x = b with ``torch.linalg.solve``.

    Cost: n Hessian-vector products and O(n^3) for the solve, so it refuses problems above ``max_size`` unknowns.
    """

    damping: float = 0.0
    max_size: int = 5000

    def __post_init__(self):
        require_positive_integer("Exact", max_size=self.max_size)
        if not self.damping >= 0:
            raise ValueError(f"Exact: damping must be >= 0, got {self.damping!r}")

    def matrix(self, matvec, like):
        n = sum(v.numel() for v in like.values())
        if n > self.max_size:
            raise ValueError(f"Exact: {n} inner parameters exceed max_size={self.max_size}; use method='cg' for large "
                             "problems or raise max_size")
        template = P.flatten(like)
        columns = []
        for i in range(n):
            unit = torch.zeros_like(template)
            unit[i] = 1
            columns.append(P.flatten(matvec(P.unflatten(unit, like))))
        a = torch.stack(columns, dim=1)
        return 0.5 * (a + a.T) + self.damping * torch.eye(n, dtype=a.dtype, device=a.device)

    def __call__(self, matvec, b, x0=None):
        a = self.matrix(matvec, b)
        rhs = P.flatten(b)
        x = torch.linalg.solve(a, rhs)
        residual = float(torch.linalg.vector_norm(a @ x - rhs) / torch.linalg.vector_norm(rhs).clamp_min(1e-300))
        return P.unflatten(x, b), SolveInfo(1, rhs.numel(), residual, True)
