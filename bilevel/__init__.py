"""bilevel: hypergradients and bilevel optimization for PyTorch.

Functional core: :func:`hypergradient` with methods from :mod:`bilevel.methods`; object layer: :class:`Problem`,
:class:`Engine`, :class:`EngineConfig`.
"""
from . import methods, solvers
from .hypergradient import hypergradient
from .methods import HypergradientResult

__all__ = ["hypergradient", "methods", "solvers", "HypergradientResult"]
__version__ = "0.1.0"
