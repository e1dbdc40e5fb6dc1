"""The protocol every hypergradient method implements, and the registry that names them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Optional

import torch

from ..params import Params

Loss = Callable[[Params, Params, Any], torch.Tensor]


@dataclass
class HypergradientResult:
    """What a method returns: the hypergradient, what it cost and how well it solved, and state for the next call.

    ``diagnostics`` holds counts such as ``gradient_evaluations`` (forward+backward passes of a loss) and
    ``hvp`` (Hessian-vector products), and for implicit methods ``residual`` (relative linear-solve residual).
    ``state`` is opaque to the caller; pass it back on the next call (the Engine does) for warm starts.
    ``inner_grads``, when a method computed it anyway, is grad_w g(w, x) on the inner batch at the given point (the
    finite difference's first pass, an unroll's first step): the Engine can take its real inner step with it.
    """

    grads: Params
    diagnostics: Dict[str, Any] = field(default_factory=dict)
    state: Any = None
    inner_grads: Optional[Params] = None


class HypergradientMethod:
    """Base class of hypergradient methods.

    A method receives detached inner parameters ``w`` (leaves that require grad), outer parameters ``x`` (leaves that
    require grad), the two losses ``g(w, x, batch)`` (inner) and ``f(w, x, batch)`` (outer), and returns
    d f(w*(x), x) / dx under its approximation of the response ``w*(x)``. Subclasses are dataclasses whose fields are
    the method's settings; they validate them in ``__post_init__``.
    """

    name: ClassVar[str] = ""
    needs_second_derivatives: ClassVar[bool] = False

    def compute(self, inner_loss: Loss, outer_loss: Loss, inner_params: Params, outer_params: Params,
                inner_batch: Any, outer_batch: Any, state: Any = None) -> HypergradientResult:
        raise NotImplementedError

    def settings(self) -> Dict[str, Any]:
        """The method's settings as a plain dict (for logs and checkpoints)."""
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}


_REGISTRY: Dict[str, Callable[..., HypergradientMethod]] = {}


def register(name: str, *aliases: str) -> Callable:
    """Class decorator (or call ``register(name)(factory)``) that makes a method available by name.

    >>> @register("my_method")
    ... @dataclass
    ... class MyMethod(HypergradientMethod): ...
    """

    def decorator(factory):
        for key in (name, *aliases):
            key = key.lower()
            if key in _REGISTRY and _REGISTRY[key] is not factory:
                raise ValueError(f"register: a method named '{key}' already exists; choose another name")
            _REGISTRY[key] = factory
        if isinstance(factory, type) and not factory.name:
            factory.name = name.lower()
        return factory

    return decorator


def names() -> list[str]:
    """Registered method names, aliases included, sorted."""
    return sorted(_REGISTRY)


def get(method: str | HypergradientMethod, **settings: Any) -> HypergradientMethod:
    """A method object from its registered name (with settings) or the object itself."""
    if isinstance(method, HypergradientMethod):
        if settings:
            raise ValueError(f"methods.get: settings {sorted(settings)} given with a method object; "
                             "set them on the object instead")
        return method
    if not isinstance(method, str):
        raise TypeError(f"methods.get: expected a method name or a HypergradientMethod, got {type(method).__name__}")
    key = method.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown hypergradient method '{method}'; registered methods: {', '.join(names())}")
    factory = _REGISTRY[key]
    if dataclasses.is_dataclass(factory):
        valid = sorted(f.name for f in dataclasses.fields(factory) if f.init)
        unknown = sorted(set(settings) - set(valid))
        if unknown:
            raise ValueError(f"method '{method}' has no setting {', '.join(unknown)}; its settings: "
                             f"{', '.join(valid) or 'none'}")
    return factory(**settings)
