"""bilevel: hypergradients and bilevel optimization for PyTorch.

Functional core: :func:`hypergradient` with methods from :mod:`bilevel.methods` and linear solvers from
:mod:`bilevel.solvers`. Object layer: :class:`Level` (one level; ``Problem`` is its former name), :class:`Engine` (the loop), :class:`EngineConfig`. Tooling:
:mod:`bilevel.compare` (methods side by side on a problem).
"""
from . import compare, distributed, methods, solvers
from .config import EngineConfig
from .engine import Engine
from .history import MetricsHistory
from .hypergradient import hypergradient
from .methods import HypergradientMethod, HypergradientResult, MethodSpec
from .autodiff import MicroBatches, StepBatches
from .level import Level
from .attention_kernels import SecondDerivativeError
from .allocator import keep_freed_memory

Problem = Level  # the former name of Level, kept so that code written for it still runs

__all__ = ["hypergradient", "methods", "solvers", "distributed", "compare", "Level", "Problem", "Engine", "EngineConfig", "MetricsHistory",
           "HypergradientMethod", "HypergradientResult", "MethodSpec", "MicroBatches", "StepBatches",
           "SecondDerivativeError", "keep_freed_memory"]
__version__ = "0.1.0"
