"""Linear solvers for implicit differentiation, all with the signature ``solver(matvec, b, x0=None)``."""
from .base import SolveInfo, SolverDivergedError
from .cg import ConjugateGradientSolver
from .dense import DenseSolver
from .gradient_descent import GradientDescentSolver
from .neumann import NeumannSolver, largest_eigenvalue

__all__ = ["SolveInfo", "SolverDivergedError", "ConjugateGradientSolver", "DenseSolver", "GradientDescentSolver",
           "NeumannSolver", "largest_eigenvalue"]
