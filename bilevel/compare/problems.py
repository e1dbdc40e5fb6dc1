"""Built-in bilevel problems for ``bilevel.compare``, registered by name, and the container for your own.

Each factory ``make(seed=0)`` returns a :class:`BilevelProblem` whose inner parameters sit at the inner optimum, so
that implicit methods are meaningful. All run in float64.

- ``quadratic``: g = 0.5 w^T A w - w^T B x, f = 0.5 ||w - c||^2 + 0.5 mu ||x||^2; closed-form hypergradient.
- ``ridge``: ridge regression with one L2 weight exp(x_j) per feature on synthetic data; inner solved in closed form.
- ``logistic``: logistic regression with per-feature L2 weights on scikit-learn's breast-cancer data; inner by L-BFGS.
- ``hyper_cleaning``: a linear softmax classifier on scikit-learn's digits with 40% of the training labels corrupted,
  one weight sigmoid(x_i) per training example; inner by L-BFGS.
- ``autolora``: AutoLoRA's search problem (gated LoRA on query/value of a small BERT built from config; LoRA weights
  and head inner with weight decay, selection logits outer); inner by L-BFGS.

scikit-learn and transformers are imported only by the problems that need them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F

from .params import Params

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


def make_problem(name: str, seed: int = 0) -> BilevelProblem:
    """A built-in problem by name."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem '{name}'; built-in problems: {', '.join(PROBLEMS)} (or pass "
                         "'module:function' returning a BilevelProblem)")
    return PROBLEMS[name](seed=seed)


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


def _lbfgs(loss: Callable[[], torch.Tensor], params: list) -> None:
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
    _lbfgs(lambda: inner_loss({"w": w}, {"log_l2": log_l2}, batch), [w])
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
    _lbfgs(lambda: inner_loss(params, {"logits": logits}, train), list(params.values()))
    return BilevelProblem(inner_loss, outer_loss, {k: v.detach() for k, v in params.items()}, {"logits": logits},
                          train, val, inner_lr=0.5, name="hyper_cleaning",
                          description=f"digits hyper-cleaning, {n_train} train ({corruption:.0%} labels corrupted) / "
                                      f"{n_val} clean val, 650 inner / {n_train} outer, inner solved by L-BFGS")


@register_problem("autolora")
def autolora(seed: int = 0, batch_size: int = 8, seq_len: int = 16, weight_decay: float = 0.05) -> BilevelProblem:
    """Gated LoRA (k = 4) on query/value of a 2-layer hidden-16 BERT built from config, in float64.

    The inner loss is cross-entropy plus 0.5 * weight_decay * ||w||^2 on the LoRA weights and head (AdamW's decay
    written into the loss), solved by L-BFGS: without the decay the inner Hessian at a trained point has negative
    eigenvalues (measured: -0.01 against a largest of 0.2), where the implicit function theorem does not apply.
    """
    transformers = _require("transformers", "autolora")
    from autolora.config import AutoLoraConfig
    from autolora.injection import inject_gated_lora, lower_parameters, upper_parameters

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=seq_len, num_labels=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                     attn_implementation="eager")
    model = transformers.BertForSequenceClassification(config).to(DTYPE).eval()
    inject_gated_lora(model, AutoLoraConfig(k=4, target_modules=["query", "value"], lora_dropout=0.0))
    model.eval()  # the injected layers are new modules in training mode
    g = _generator(seed)
    make = lambda: {"input_ids": torch.randint(0, 100, (batch_size, seq_len), generator=g),
                    "labels": torch.randint(0, 2, (batch_size,), generator=g)}
    train, val = make(), make()

    def outer_loss(inner, outer, batch):
        return torch.func.functional_call(model, {**inner, **outer}, kwargs=batch).loss

    def inner_loss(inner, outer, batch):
        return outer_loss(inner, outer, batch) + 0.5 * weight_decay * sum((v ** 2).sum() for v in inner.values())

    lower = {k: v.detach().clone().requires_grad_(True) for k, v in lower_parameters(model).items()}
    upper = {k: v.detach().clone() for k, v in upper_parameters(model).items()}
    _lbfgs(lambda: inner_loss(lower, upper, train), list(lower.values()))
    n_inner = sum(v.numel() for v in lower.values())
    return BilevelProblem(inner_loss, outer_loss, {k: v.detach() for k, v in lower.items()}, upper, train, val,
                          inner_lr=0.1, name="autolora",
                          description=f"AutoLoRA search: gated LoRA k=4 on query/value of a 2-layer hidden-16 BERT "
                                      f"(float64), batch {batch_size} x {seq_len}, {n_inner} inner / "
                                      f"{sum(v.numel() for v in upper.values())} outer, weight decay "
                                      f"{weight_decay}, inner solved by L-BFGS")
