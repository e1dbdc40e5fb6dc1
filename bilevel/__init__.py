"""bilevel: hypergradients and bilevel optimization for PyTorch.

Functional core: :func:`hypergradient` with methods from :mod:`bilevel.methods` and linear solvers from
:mod:`bilevel.solvers`. Object layer: :class:`Problem` (one level), :class:`Engine` (the loop), :class:`EngineConfig`.
"""
from . import distributed, methods, solvers
from .builtin_problems import BilevelProblem
from .comparison import compare
from .config import EngineConfig
from .engine import Engine
from .history import MetricsHistory
from .hypergradient import hypergradient
from .methods import HypergradientMethod, HypergradientResult
from .passes import MicroBatches
from .problem import Problem
from .second_order import SecondDerivativeError

__all__ = ["hypergradient", "methods", "solvers", "distributed", "Problem", "Engine", "EngineConfig", "MetricsHistory",
           "HypergradientMethod", "HypergradientResult", "MicroBatches", "SecondDerivativeError", "compare",
           "BilevelProblem"]
__version__ = "0.1.0"
