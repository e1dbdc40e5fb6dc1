"""bilevel: hypergradients and bilevel optimization for PyTorch.

Functional core: :func:`hypergradient` with methods from :mod:`bilevel.methods` and linear solvers from
:mod:`bilevel.solvers`. Object layer: :class:`Problem` (one level), :class:`Engine` (the loop), :class:`EngineConfig`. Tooling:
:mod:`bilevel.compare` (methods side by side on a problem).
"""
from . import compare, distributed, methods, solvers
from .config import EngineConfig
from .engine import Engine
from .history import MetricsHistory
from .hypergradient import hypergradient
from .methods import HypergradientMethod, HypergradientResult, MethodSpec
from .autodiff import MicroBatches, StepBatches
from .problem import Problem
from .attention_kernels import SecondDerivativeError

__all__ = ["hypergradient", "methods", "solvers", "distributed", "compare", "Problem", "Engine", "EngineConfig", "MetricsHistory",
           "HypergradientMethod", "HypergradientResult", "MethodSpec", "MicroBatches", "StepBatches",
           "SecondDerivativeError"]
__version__ = "0.1.0"
