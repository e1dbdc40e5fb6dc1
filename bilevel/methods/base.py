"""The protocol every hypergradient method implements, and the registry that names them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional

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

    A method declares the facts callers need about its settings, so that nobody keeps a table of them:
    ``main_count`` names the setting a bare number in a method spec sets (``iterations``, ``steps``), and
    ``inner_lr`` names the setting that models the inner optimizer's learning rate, which :func:`build` (and through
    it the Engine, ``compare`` and ``autolora``) fills from what the caller knows.
    :meth:`inner_optimizer_settings` says which settings a live ``torch.optim`` optimizer determines, and
    :meth:`settings_from_inner_optimizer` reads them off it.
    """

    name: ClassVar[str] = ""
    needs_second_derivatives: ClassVar[bool] = False
    main_count: ClassVar[Optional[str]] = None
    inner_lr: ClassVar[Optional[str]] = None

    @classmethod
    def inner_optimizer_settings(cls) -> tuple[str, ...]:
        """The settings a live inner optimizer determines: by default the inner learning rate alone."""
        return (cls.inner_lr,) if cls.inner_lr is not None else ()

    @classmethod
    def settings_from_inner_optimizer(cls, optimizer: torch.optim.Optimizer, wanted: set[str]) -> Dict[str, Any]:
        """Values of the ``wanted`` settings (some of :meth:`inner_optimizer_settings`) read off ``optimizer``."""
        return {cls.inner_lr: learning_rate_of(optimizer, cls.name)} if cls.inner_lr in wanted else {}

    def batches_per_call(self) -> tuple[int, int]:
        """How many fresh inner and outer batches one call consumes when a caller draws them (the Engine does).

        The default ``(0, 1)``: no fresh inner batch (the inner batch is the last inner step's) and one outer batch.
        A method that samples a fresh batch for each step of its own, as the stochastic papers do, asks for more;
        a count above one arrives as :class:`~bilevel.StepBatches`, one batch per step.
        """
        return (0, 1)

    def initial_state(self, inner_params: Params, outer_params: Params) -> Any:
        """The state to start from, taken by the Engine before the first iteration's inner steps (default None).

        For a method whose state must start where the inner parameters start, before the Engine moves them (F2SA's
        second inner copy: y_0 = z_0, so that y and z step in lockstep from the first iteration). It gets the levels'
        live parameters: copy what it keeps, change nothing. ``compute`` still gets ``state=None`` from callers that
        keep no state (the functional API).
        """
        return None

    def compute(self, inner_loss: Loss, outer_loss: Loss, inner_params: Params, outer_params: Params,
                inner_batch: Any, outer_batch: Any, state: Any = None) -> HypergradientResult:
        raise NotImplementedError

    def missing_settings(self) -> list[str]:
        """Declared settings still unset (``None``): the inner learning rate when no caller knew it."""
        return [self.inner_lr] if self.inner_lr is not None and getattr(self, self.inner_lr) is None else []

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


def build(method: "str | HypergradientMethod | MethodSpec", *, inner_lr: Optional[float] = None,
          inner_optimizer: Optional[torch.optim.Optimizer] = None, **settings: Any) -> HypergradientMethod:
    """A method object with the settings it declares filled from what the caller knows.

    ``method`` is a registered name (with ``settings``), a :class:`MethodSpec` or a method object. The settings the
    method declares (its ``inner_lr``; an unroll's optimizer) are taken from the live ``inner_optimizer`` (see
    :meth:`HypergradientMethod.settings_from_inner_optimizer`), else ``inner_lr`` fills the learning rate. Only
    settings the caller left unset are filled: those not given by name, or ``None`` on an object.

    >>> build("finite_difference", inner_lr=0.1).lr
    0.1
    """
    if isinstance(method, MethodSpec):
        if settings:
            raise ValueError(f"methods.build: settings {sorted(settings)} given with a MethodSpec; put them in it")
        method, settings = method.name, dict(method.settings)
    made = get(method, **settings)
    fixed = None if isinstance(method, HypergradientMethod) else set(settings)
    declared = type(made).inner_optimizer_settings()
    unset = {k for k in declared if getattr(made, k) is None} if fixed is None else set(declared) - fixed
    if not unset:
        return made
    if inner_optimizer is not None:
        known = type(made).settings_from_inner_optimizer(inner_optimizer, unset)
    elif inner_lr is not None and made.inner_lr in unset:
        known = {made.inner_lr: float(inner_lr)}
    else:
        known = {}
    fill = {k: v for k, v in known.items() if k in unset and getattr(made, k) != v}
    return dataclasses.replace(made, **fill) if fill and dataclasses.is_dataclass(made) else made


@dataclass(frozen=True)
class MethodSpec:
    """A method by name with the settings its caller fixed; :meth:`build` fills the rest that the method declares.

    The Engine rebuilds a method given this way (or by a plain name) before every hypergradient, so its inner learning
    rate follows the inner optimizer's live one (a scheduler's changes included). ``label`` names the run in reports.

    >>> Engine(inner, outer, method=MethodSpec("unroll", {"steps": 5}))
    """

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def build(self, inner_lr: Optional[float] = None,
              inner_optimizer: Optional[torch.optim.Optimizer] = None) -> HypergradientMethod:
        return build(self, inner_lr=inner_lr, inner_optimizer=inner_optimizer)


def learning_rate_of(optimizer: torch.optim.Optimizer, method: str) -> float:
    """The one learning rate of ``optimizer`` (all parameter groups must agree: a method models one inner step)."""
    rates = {float(group["lr"]) for group in optimizer.param_groups}
    if len(rates) != 1:
        raise ValueError(f"{method}: the inner optimizer's parameter groups have learning rates {sorted(rates)}, but "
                         f"this method models one inner step size; pass a method object with its lr set")
    return rates.pop()
