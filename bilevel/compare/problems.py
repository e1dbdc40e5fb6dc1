"""Bilevel problems for ``compare``: the functional snapshot :class:`BilevelProblem`, built-in ones by name.

Each factory ``make(seed=0)`` returns a :class:`BilevelProblem` whose inner parameters sit at the inner optimum, so
that implicit methods are meaningful. All run in float64.

- ``quadratic``: g = 0.5 w^T A w - w^T B x, f = 0.5 ||w - c||^2 + 0.5 mu ||x||^2; closed-form hypergradient.
- ``ridge``: ridge regression with one L2 weight exp(x_j) per feature on synthetic data; inner solved in closed form.
- ``logistic``: logistic regression with per-feature L2 weights on scikit-learn's breast-cancer data; inner by L-BFGS.
- ``hyper_cleaning``: a linear softmax classifier on scikit-learn's digits with 40% of the training labels corrupted,
  one weight sigmoid(x_i) per training example; inner by L-BFGS.

Applications add their own without the core knowing them: an entry point in the group ``bilevel.problems`` (name ->
``module:function``) is listed and made by name like a built-in one; ``autolora`` registers its search problem so.

scikit-learn and transformers are imported only by the problems that need them.
"""
from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F

from ..params import Params

DTYPE = torch.float64


@dataclass
class BilevelProblem:
    """Everything ``compare`` needs: the two losses, the current parameters and batches, optionally the answer.

    ``inner_lr`` is the step size given to methods with an ``lr`` setting (unroll, finite_difference) when the spec
    does not set one. ``reference``, when known (a closed form), replaces the computed reference.
    """

    inner_loss: Callable
    outer_loss: Callable
    inner_params: Params
    outer_params: Params
    inner_batch: Any
    outer_batch: Any
    reference: Optional[Params] = None
    reference_name: str = "given"
    inner_lr: Optional[float] = None
    name: str = "problem"
    description: str = ""

    def __post_init__(self):
        for attribute in ("inner_params", "outer_params"):
            value = getattr(self, attribute)
            if not isinstance(value, dict) or not value:
                raise ValueError(f"BilevelProblem: {attribute} must be a non-empty dict name -> Tensor")
        if self.inner_lr is not None and not self.inner_lr > 0:
            raise ValueError(f"BilevelProblem: inner_lr must be > 0, got {self.inner_lr!r}")

    def sizes(self) -> tuple[int, int]:
        """(number of inner parameters, number of outer parameters)."""
        return (sum(v.numel() for v in self.inner_params.values()),
                sum(v.numel() for v in self.outer_params.values()))


PROBLEMS: Dict[str, Callable[..., BilevelProblem]] = {}


def register_problem(name: str) -> Callable:
    """Decorator registering a factory ``make(seed=0) -> BilevelProblem`` under ``name``."""

    def decorator(factory):
        PROBLEMS[name] = factory
        return factory

    return decorator


ENTRY_POINT_GROUP = "bilevel.problems"


def _plugins() -> Dict[str, Any]:
    """Problems that installed packages declare as entry points (name -> entry point), loaded only when made."""
    from importlib.metadata import entry_points

    return {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP) if point.name not in PROBLEMS}


def problem_names() -> list[str]:
    """Built-in problems, then those installed packages add."""
    return [*PROBLEMS, *sorted(_plugins())]


def make_problem(name: str, seed: int = 0) -> BilevelProblem:
    """A problem by name (built-in or an installed package's), or ``module:function`` called with ``seed=``."""
    if name in PROBLEMS:
        return _checked(PROBLEMS[name](seed=seed), name)
    plugins = _plugins()
    if name in plugins:
        return _checked(plugins[name].load()(seed=seed), name)
    if ":" not in name:
        raise ValueError(f"unknown problem '{name}'; problems: {', '.join(problem_names())} (or pass "
                         "'module:function' returning a BilevelProblem)")
    module_name, _, attribute = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"problem '{name}': cannot load {attribute} from {module_name} ({error})") from None
    if not callable(factory):
        raise ValueError(f"problem '{name}': {attribute} is a {type(factory).__name__}, not a function; name a "
                         "function that takes seed= and returns a BilevelProblem")
    if not _takes_seed_keyword(factory):
        raise ValueError(f"problem '{name}': {attribute} cannot be called with seed= alone; define it as "
                         f"{attribute}(seed=0) -> BilevelProblem (--seed is passed to it)")
    return _checked(factory(seed=seed), name)


def _takes_seed_keyword(factory) -> bool:
    """Whether ``factory(seed=...)`` binds; a callable without a readable signature is given the benefit."""
    try:
        inspect.signature(factory).bind(seed=0)
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): let the call itself tell
        return True
    return True


def _checked(problem: Any, name: str) -> BilevelProblem:
    if not isinstance(problem, BilevelProblem):
        raise ValueError(f"problem '{name}' made a {type(problem).__name__}, expected a "
                         "bilevel.compare.BilevelProblem")
    return problem


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"this problem needs {module}; install it with pip install 'bilevel[{extra}]'") from None


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@register_problem("quadratic")
def quadratic(seed: int = 0, n: int = 30, m: int = 5, mu: float = 0.1) -> BilevelProblem:
    """w*(x) = A^-1 B x, so dF/dx = B^T A^-1 (w* - c) + mu x; A has eigenvalues in [1, 20]."""
    g = _generator(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
    a = q @ torch.diag(torch.linspace(1.0, 20.0, n, dtype=DTYPE)) @ q.T
    b = torch.randn(n, m, generator=g, dtype=DTYPE)
    c = torch.randn(n, generator=g, dtype=DTYPE)
    x = torch.randn(m, generator=g, dtype=DTYPE)
    w = torch.linalg.solve(a, b @ x)
    reference = b.T @ torch.linalg.solve(a, w - c) + mu * x

    def inner_loss(inner, outer, batch):
        return 0.5 * inner["w"] @ (a @ inner["w"]) - inner["w"] @ (b @ outer["x"])

    def outer_loss(inner, outer, batch):
        return 0.5 * ((inner["w"] - c) ** 2).sum() + 0.5 * mu * (outer["x"] ** 2).sum()

    return BilevelProblem(inner_loss, outer_loss, {"w": w}, {"x": x}, None, None, {"x": reference},
                          "closed form B^T A^-1 (w* - c) + mu x", inner_lr=0.05, name="quadratic",
                          description=f"random quadratic, {n} inner / {m} outer, Hessian eigenvalues in [1, 20]")


def _per_feature_l2(design: torch.Tensor, weights: torch.Tensor, log_l2: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.exp(log_l2) * weights[: log_l2.numel()] ** 2).sum() / design.shape[0]


@register_problem("ridge")
def ridge(seed: int = 0, n: int = 200, d: int = 40) -> BilevelProblem:
    """Least squares plus sum_j exp(x_j) w_j^2 / (2n) on synthetic data; outer: validation squared error."""
    g = _generator(seed)
    truth = torch.randn(d, generator=g, dtype=DTYPE) * (torch.rand(d, generator=g, dtype=DTYPE) < 0.3)
    make = lambda rows: torch.randn(rows, d, generator=g, dtype=DTYPE)
    x_train, x_val = make(n), make(n)
    y_train = x_train @ truth + 0.5 * torch.randn(n, generator=g, dtype=DTYPE)
    y_val = x_val @ truth + 0.5 * torch.randn(n, generator=g, dtype=DTYPE)
    log_l2 = torch.full((d,), math.log(5.0), dtype=DTYPE)
    w = torch.linalg.solve(x_train.T @ x_train + torch.diag(torch.exp(log_l2)), x_train.T @ y_train)

    def inner_loss(inner, outer, batch):
        xs, ys = batch
        return 0.5 * ((xs @ inner["w"] - ys) ** 2).mean() + _per_feature_l2(xs, inner["w"], outer["log_l2"])

    def outer_loss(inner, outer, batch):
        xs, ys = batch
        return 0.5 * ((xs @ inner["w"] - ys) ** 2).mean()

    return BilevelProblem(inner_loss, outer_loss, {"w": w}, {"log_l2": log_l2}, (x_train, y_train), (x_val, y_val),
                          inner_lr=0.5, name="ridge",
                          description=f"ridge regression, {n} examples, {d} features, per-feature L2 weights")


def minimize_lbfgs(loss: Callable[[], torch.Tensor], params: list) -> None:
    """Minimise ``loss()`` over ``params`` in place by L-BFGS to near machine precision (a problem's inner optimum)."""
    optimizer = torch.optim.LBFGS(params, lr=1, max_iter=1000, tolerance_grad=1e-12, tolerance_change=1e-15,
                                  history_size=50, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)


@register_problem("logistic")
def logistic(seed: int = 0) -> BilevelProblem:
    """Breast-cancer logistic regression (30 standardised features + bias), L2 weight exp(x_j) per feature."""
    datasets = _require("sklearn.datasets", "examples").datasets
    data = datasets.load_breast_cancer()
    order = torch.randperm(len(data.target), generator=_generator(seed))
    features = torch.tensor(data.data, dtype=DTYPE)[order]
    labels = torch.tensor(data.target, dtype=DTYPE)[order]
    train, val = slice(0, 285), slice(285, None)
    mean, std = features[train].mean(0), features[train].std(0)
    features = torch.cat([(features - mean) / std, torch.ones(len(labels), 1, dtype=DTYPE)], dim=1)
    log_l2 = torch.zeros(features.shape[1] - 1, dtype=DTYPE)

    def inner_loss(inner, outer, batch):
        xs, ys = batch
        return (F.binary_cross_entropy_with_logits(xs @ inner["w"], ys)
                + _per_feature_l2(xs, inner["w"], outer["log_l2"]))

    def outer_loss(inner, outer, batch):
        xs, ys = batch
        return F.binary_cross_entropy_with_logits(xs @ inner["w"], ys)

    w = torch.zeros(features.shape[1], dtype=DTYPE, requires_grad=True)
    batch = (features[train], labels[train])
    minimize_lbfgs(lambda: inner_loss({"w": w}, {"log_l2": log_l2}, batch), [w])
    return BilevelProblem(inner_loss, outer_loss, {"w": w.detach()}, {"log_l2": log_l2}, batch,
                          (features[val], labels[val]), inner_lr=1.0, name="logistic",
                          description="breast-cancer logistic regression (285 train / 284 val), per-feature L2, "
                                      "inner solved by L-BFGS")


@register_problem("hyper_cleaning")
def hyper_cleaning(seed: int = 0, n_train: int = 300, n_val: int = 300, corruption: float = 0.4,
                   weight_decay: float = 1e-2) -> BilevelProblem:
    """Digits, linear softmax classifier (650 inner parameters), one weight sigmoid(x_i) per training example."""
    datasets = _require("sklearn.datasets", "examples").datasets
    data = datasets.load_digits()
    g = _generator(seed)
    order = torch.randperm(len(data.target), generator=g)
    features = torch.tensor(data.data / 16.0, dtype=DTYPE)[order]
    labels = torch.tensor(data.target, dtype=torch.long)[order]
    features = features - features[:n_train].mean(0)
    noisy = labels[:n_train].clone()
    corrupted = torch.rand(n_train, generator=g) < corruption
    # a shift of 1..9 classes modulo 10 moves a corrupted label to another class, uniformly
    noisy[corrupted] = (noisy[corrupted] + torch.randint(1, 10, (int(corrupted.sum()),), generator=g)) % 10
    train = (features[:n_train], noisy)
    val = (features[n_train:n_train + n_val], labels[n_train:n_train + n_val])

    def inner_loss(inner, outer, batch):
        xs, ys = batch
        weights = torch.sigmoid(outer["logits"])
        losses = F.cross_entropy(xs @ inner["weight"].T + inner["bias"], ys, reduction="none")
        penalty = (inner["weight"] ** 2).sum() + (inner["bias"] ** 2).sum()
        return (weights * losses).sum() / weights.sum() + 0.5 * weight_decay * penalty

    def outer_loss(inner, outer, batch):
        xs, ys = batch
        return F.cross_entropy(xs @ inner["weight"].T + inner["bias"], ys)

    logits = torch.zeros(n_train, dtype=DTYPE)
    params = {"weight": torch.zeros(10, 64, dtype=DTYPE, requires_grad=True),
              "bias": torch.zeros(10, dtype=DTYPE, requires_grad=True)}
    minimize_lbfgs(lambda: inner_loss(params, {"logits": logits}, train), list(params.values()))
    return BilevelProblem(inner_loss, outer_loss, {k: v.detach() for k, v in params.items()}, {"logits": logits},
                          train, val, inner_lr=0.5, name="hyper_cleaning",
                          description=f"digits hyper-cleaning, {n_train} train ({corruption:.0%} labels corrupted) / "
                                      f"{n_val} clean val, 650 inner / {n_train} outer, inner solved by L-BFGS")
