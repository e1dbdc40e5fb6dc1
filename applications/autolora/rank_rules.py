"""Rank rules: from the searched gates and LoRA weights of every matrix to one rank per matrix.

A rule reads the `MatrixEvidence` of each adapted matrix and returns the component indices it keeps; the rank is
their count. Rules are registered by name, like the hypergradient methods, so a user adds one without touching
the library::

    @register_rank_rule
    @dataclass
    class MyRule:
        name: ClassVar[str] = "mine"
        def select(self, evidence, k, allow_zero_rank, budget): ...

Built in:

- ``threshold`` (AutoLoRA, Zhang et al. 2024): a matrix keeps the components whose softmax gate is >= 1/k (or
  ``--threshold``); every matrix decides alone, so the total rank is whatever the gates give. A concentrated
  softmax leaves *fewer* components above 1/k, so the matrix whose update is used most can get the least rank.
- ``budget``: components compete across all matrices for a global budget (a total rank, met exactly, or a
  parameter count, met greedily from below). The importance of a matrix's i-th component is, by ``score``:
  ``"spectrum"`` the i-th singular value of its searched, gated update ``(alpha/k) B diag(a) A`` (how much
  rank the update actually uses, whatever its parametrisation), ``"contribution"`` the norm of the j-th rank-1
  term ``|(alpha/k) a_j| ||B[:, j]|| ||A[j, :]||``, or ``"gate"`` the gate a_j alone (a control: gates are
  normalised per matrix and say nothing across matrices).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch
from torch import nn

from .layers import GatedLoraLinear

__all__ = ["MatrixEvidence", "RankBudget", "RankRule", "ThresholdRule", "BudgetRule", "register_rank_rule",
           "get_rank_rule", "rank_rule_names", "matrix_evidence", "model_evidence", "check_budget",
           "select_components"]


@dataclass
class MatrixEvidence:
    """What the search left in one gated matrix: gates a (softmax, length k) and component contributions."""

    gates: list[float]
    contributions: list[float]      # |scaling * a_j| * ||B[:, j]|| * ||A[j, :]||: norm of component j's update
    singular_values: list[float]    # of the whole gated update (alpha/k) B diag(a) A, descending, length k
    in_features: int
    out_features: int

    @property
    def parameters_per_rank(self) -> int:
        """Trainable parameters one rank adds to this matrix's LoRA (a row of A and a column of B)."""
        return self.in_features + self.out_features

    def scores(self, score: str) -> list[float]:
        """Importance of each of the k components under ``score`` (one of `SCORES`)."""
        if score not in SCORES:
            raise ValueError(f"budget rule: score must be one of {list(SCORES)}, got {score!r}")
        return getattr(self, SCORES[score])


# score name -> the MatrixEvidence field it ranks by
SCORES = {"spectrum": "singular_values", "contribution": "contributions", "gate": "gates"}


def matrix_evidence(layer: GatedLoraLinear) -> MatrixEvidence:
    """The evidence of one `GatedLoraLinear` (in float64, detached)."""
    with torch.no_grad():
        gates = layer.gates().detach().double()
        A, B = layer.lora_A.detach().double(), layer.lora_B.detach().double()   # (k, in), (out, k)
        weighted = layer.scaling * gates
        contributions = weighted.abs() * B.norm(dim=0) * A.norm(dim=1)
        # Singular values of B diag(w) A without forming the (out x in) matrix: B = Qb Rb, A^T = Qa Ra, so the
        # update is Qb (Rb diag(w) Ra^T) Qa^T and shares the singular values of the (k x k) core.
        _, r_b = torch.linalg.qr(B)
        _, r_a = torch.linalg.qr(A.t())
        singular = torch.linalg.svdvals((r_b * weighted) @ r_a.t())
    return MatrixEvidence(gates=[float(v) for v in gates], contributions=[float(v) for v in contributions],
                          singular_values=[float(v) for v in singular], in_features=layer.in_features,
                          out_features=layer.out_features)


def model_evidence(model: nn.Module) -> dict[str, MatrixEvidence]:
    """Module name -> `MatrixEvidence` for every gated layer of ``model``."""
    return {name: matrix_evidence(m) for name, m in model.named_modules() if isinstance(m, GatedLoraLinear)}


@dataclass(frozen=True)
class RankBudget:
    """A global budget: a total rank over all matrices, or a number of LoRA parameters (one of the two)."""

    total_rank: int | None = None
    parameters: int | None = None

    def __post_init__(self):
        if (self.total_rank is None) == (self.parameters is None):
            raise ValueError("RankBudget: give exactly one of total_rank (--rank-budget) and parameters "
                             "(--parameter-budget)")

    def to_dict(self) -> dict:
        return {"total_rank": self.total_rank, "parameters": self.parameters}


def check_budget(budget: RankBudget, evidence_shapes: dict[str, tuple[int, int]], k: int,
                 allow_zero_rank: bool) -> None:
    """Refuse a budget no allocation can meet: below one rank per matrix (without zero rank) or above k each.

    ``evidence_shapes`` maps each adapted matrix to (in_features, out_features); call it before anything is
    written, with the target matrices of the model.
    """
    costs = [i + o for i, o in evidence_shapes.values()]
    n = len(costs)
    if budget.total_rank is not None:
        low, high = (0 if allow_zero_rank else n), k * n
        if not low <= budget.total_rank <= high or (allow_zero_rank and budget.total_rank < 1):
            low = max(low, 1)
            raise ValueError(f"--rank-budget must be in [{low}, {high}] for {n} adapted matrices with k={k}"
                             f"{'' if allow_zero_rank else ' (one rank each at least; --allow-zero-rank lowers it)'}"
                             f", got {budget.total_rank}")
    else:
        low = min(costs) if allow_zero_rank else sum(costs)
        high = k * sum(costs)
        if not low <= budget.parameters <= high:
            raise ValueError(f"--parameter-budget must be in [{low}, {high}] for {n} adapted matrices with k={k}"
                             f"{'' if allow_zero_rank else ' (one rank each at least; --allow-zero-rank lowers it)'}"
                             f", got {budget.parameters}")


class RankRule(Protocol):
    """Turns the evidence of every matrix into kept component indices (ascending) per matrix."""

    name: ClassVar[str]
    uses_budget: ClassVar[bool]

    def select(self, evidence: dict[str, MatrixEvidence], k: int, allow_zero_rank: bool,
               budget: RankBudget | None) -> dict[str, list[int]]: ...


def select_components(weights: torch.Tensor | list[float], threshold: float,
                      allow_zero_rank: bool = False) -> list[int]:
    """Indices (ascending) of one matrix's components whose gate is >= ``threshold`` (the threshold rule)."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.ndim != 1 or w.numel() == 0:
        raise ValueError(f"select_components: weights must be a non-empty 1-D vector, got shape {tuple(w.shape)}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"select_components: threshold must be in (0, 1], got {threshold}")
    # A relative tolerance keeps exactly-uniform weights (all 1/k in float32) at the 1/k threshold.
    kept = [j for j, v in enumerate(w.tolist()) if v >= threshold * (1 - 1e-6)]
    if not kept and not allow_zero_rank:
        kept = [int(torch.argmax(w))]
    return kept


_RULES: dict[str, type] = {}


def register_rank_rule(cls: type) -> type:
    """Class decorator: make a rank rule available by its ``name`` (in the CLI's ``--rank-rule`` too)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_rank_rule: {cls.__name__} needs a class attribute `name`")
    if name in _RULES and _RULES[name] is not cls:
        raise ValueError(f"register_rank_rule: a rule named {name!r} is already registered")
    _RULES[name] = cls
    return cls


def rank_rule_names() -> list[str]:
    return sorted(_RULES)


def get_rank_rule(name: str, **settings) -> RankRule:
    """The rule registered as ``name`` with ``settings``; an unknown name lists the valid ones."""
    if name not in _RULES:
        raise ValueError(f"--rank-rule {name!r} is not a rank rule; valid: {', '.join(rank_rule_names())}")
    return _RULES[name](**settings)


@register_rank_rule
@dataclass
class ThresholdRule:
    """AutoLoRA's rule: keep component j of a matrix when its gate a_j >= threshold (default 1/k).

    A matrix with no such component keeps its strongest one, or gets rank 0 with ``allow_zero_rank``.
    """

    name: ClassVar[str] = "threshold"
    uses_budget: ClassVar[bool] = False
    threshold: float | None = None

    def select(self, evidence, k, allow_zero_rank, budget=None):
        threshold = self.threshold if self.threshold is not None else 1.0 / k
        return {name: select_components(m.gates, threshold, allow_zero_rank) for name, m in evidence.items()}


@register_rank_rule
@dataclass
class BudgetRule:
    """Global allocation: the most important components across all matrices until the budget is spent.

    Without ``allow_zero_rank`` every matrix first keeps its most important component. Then components are
    taken in decreasing importance (ties: model order, then component order): a total-rank budget is met
    exactly; a parameter budget takes each component that still fits (a matrix's rank costs in + out
    parameters), so it ends as close from below as this greedy pass gets.
    """

    name: ClassVar[str] = "budget"
    uses_budget: ClassVar[bool] = True
    score: str = "spectrum"

    def select(self, evidence, k, allow_zero_rank, budget):
        if budget is None:
            raise ValueError("--rank-rule budget needs --rank-budget (a total rank) or --parameter-budget")
        check_budget(budget, {n: (m.in_features, m.out_features) for n, m in evidence.items()}, k, allow_zero_rank)
        names = list(evidence)
        scores = {name: evidence[name].scores(self.score) for name in names}
        kept: dict[str, list[int]] = {name: [] for name in names}
        spent_rank, spent_params = 0, 0
        order = sorted(((-s, i, j) for i, name in enumerate(names) for j, s in enumerate(scores[name])))
        if not allow_zero_rank:
            for name in names:
                best = max(range(len(scores[name])), key=lambda j: (scores[name][j], -j))
                kept[name].append(best)
                spent_rank += 1
                spent_params += evidence[name].parameters_per_rank
        for _, i, j in order:
            name = names[i]
            if j in kept[name]:
                continue
            cost = evidence[name].parameters_per_rank
            if budget.total_rank is not None:
                if spent_rank >= budget.total_rank:
                    break
            elif spent_params + cost > budget.parameters:
                continue
            kept[name].append(j)
            spent_rank += 1
            spent_params += cost
        return {name: sorted(v) for name, v in kept.items()}
