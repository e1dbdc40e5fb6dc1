"""Hypergradient methods, one module each, registered by name.

>>> import bilevel
>>> bilevel.methods.get("cg", iterations=50)
>>> bilevel.methods.build("unroll", inner_optimizer=torch.optim.Adam(...))  # settings it declares, filled
>>> bilevel.methods.names()
"""
from .amigo import AmIGO
from .base import HypergradientMethod, HypergradientResult, MethodSpec, build, get, names, register
from .bome import BOME
from .conjugate_gradient import ConjugateGradient
from .exact import Exact
from .f2sa import F2SA
from .finite_difference import FiniteDifference
from .first_order import FirstOrder
from .identity_implicit import IdentityImplicit
from .implicit import Implicit, ImplicitMethod
from .neumann import Neumann
from .soba import SOBA
from .unroll import Unroll

__all__ = ["HypergradientMethod", "HypergradientResult", "MethodSpec", "build", "get", "names", "register", "AmIGO",
           "BOME", "ConjugateGradient", "Exact", "F2SA", "FiniteDifference", "FirstOrder", "IdentityImplicit",
           "Implicit", "ImplicitMethod", "Neumann", "SOBA", "Unroll"]
