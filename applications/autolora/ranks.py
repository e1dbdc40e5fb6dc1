"""From the searched gates to ranks, and the ``ranks.json`` file that carries them.

The rank rule (`autolora.rank_rules`) decides: AutoLoRA's ``threshold`` rule keeps, per matrix, the components
whose softmax weight is >= threshold (default 1/k); the ``budget`` rule spends a global budget on the most
important components across matrices. ``ranks.json`` records the rule, its budget and the evidence (gates and
component contributions) behind every rank.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from torch import nn

from .injection import gated_layers
from .outputs import write_json_atomic
from .rank_rules import RankBudget, RankRule, get_rank_rule, model_evidence, select_components

__all__ = ["RankResult", "select_components", "compute_ranks", "uniform_ranks", "save_ranks", "load_ranks"]

RANKS_FORMAT_VERSION = 1


@dataclass
class RankResult:
    """The learned ranks and the evidence behind them (what ``ranks.json`` holds)."""

    ranks: dict[str, int]
    k: int
    threshold: float | None
    allow_zero_rank: bool
    weights: dict[str, list[float]] = field(default_factory=dict)   # final softmax weights per module
    kept: dict[str, list[int]] = field(default_factory=dict)        # kept component indices per module
    rule: str = "threshold"
    budget: dict | None = None                                      # RankBudget.to_dict() of a budgeted rule
    importance: dict[str, list[float]] = field(default_factory=dict)  # per module: the scores ranked by
    importance_score: str = "spectrum"                              # which score (autolora.rank_rules.SCORES)

    def to_dict(self) -> dict:
        return {"format_version": RANKS_FORMAT_VERSION, "k": self.k, "threshold": self.threshold,
                "allow_zero_rank": self.allow_zero_rank, "rule": self.rule, "budget": self.budget,
                "ranks": self.ranks, "weights": self.weights, "kept": self.kept, "importance": self.importance,
                "importance_score": self.importance_score}

    @classmethod
    def from_dict(cls, data: dict, source: str = "ranks.json") -> "RankResult":
        """The inverse of `to_dict`; errors name ``source`` (the file the dict was read from)."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object written by `autolora search`, got "
                             f"{type(data).__name__}")
        missing = [key for key in ("ranks", "k") if key not in data]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}; expected a file written by `autolora search`")
        if not _is_integer(data["k"]) or data["k"] < 1 or not isinstance(data["ranks"], dict):
            raise ValueError(f"{source}: 'k' must be an integer >= 1 and 'ranks' an object {{module: rank}}, got "
                             f"k={data['k']!r}, ranks of type {type(data['ranks']).__name__}")
        bad = {name: r for name, r in data["ranks"].items() if not (_is_integer(r) and 0 <= r <= data["k"])}
        if bad:
            raise ValueError(f"{source}: ranks must be integers in [0, k={data['k']}], got {bad}")
        ranks = {str(name): int(r) for name, r in data["ranks"].items()}
        threshold = data.get("threshold")
        return cls(ranks=ranks, k=int(data["k"]), threshold=None if threshold is None else float(threshold),
                   allow_zero_rank=bool(data.get("allow_zero_rank", False)),
                   weights=dict(data.get("weights", {})), kept=dict(data.get("kept", {})),
                   rule=str(data.get("rule", "threshold")), budget=data.get("budget"),
                   importance=dict(data.get("importance", {})),
                   importance_score=str(data.get("importance_score", "spectrum")))

    @property
    def total_rank(self) -> int:
        return sum(self.ranks.values())


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def compute_ranks(model: nn.Module, threshold: float | None = None, allow_zero_rank: bool = False, *,
                  rule: str | RankRule = "threshold", budget: RankBudget | None = None) -> RankResult:
    """Ranks of every `GatedLoraLinear` in ``model`` by ``rule`` (a registered name or a rule object).

    ``threshold`` (default 1/k) configures the ``threshold`` rule; ``budget`` the budgeted ones.
    """
    layers = gated_layers(model)
    if not layers:
        raise ValueError("compute_ranks: the model has no GatedLoraLinear layers; call inject_gated_lora first")
    k = next(iter(layers.values())).k
    if isinstance(rule, str):
        rule = get_rank_rule(rule, threshold=threshold) if rule == "threshold" else get_rank_rule(rule)
    evidence = model_evidence(model)
    kept = rule.select(evidence, k, allow_zero_rank, budget)
    used_threshold = (threshold if threshold is not None else 1.0 / k) if rule.name == "threshold" else None
    score = getattr(rule, "score", "spectrum")
    return RankResult(ranks={name: len(v) for name, v in kept.items()}, k=k, threshold=used_threshold,
                      allow_zero_rank=allow_zero_rank, weights={n: e.gates for n, e in evidence.items()},
                      kept=kept, rule=rule.name, budget=budget.to_dict() if budget is not None else None,
                      importance={n: e.scores(score) for n, e in evidence.items()}, importance_score=score)


def uniform_ranks(names: list[str], rank: int, k: int | None = None) -> RankResult:
    """The same ``rank`` for every matrix in ``names``: the uniform-LoRA baseline (``retrain --uniform-rank``)."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"--uniform-rank must be an integer >= 1, got {rank!r}")
    if not names:
        raise ValueError("uniform_ranks: no matrices to adapt; check --target-modules")
    k = max(rank, k or rank)
    return RankResult(ranks={name: rank for name in names}, k=k, threshold=None, allow_zero_rank=False,
                      kept={name: list(range(rank)) for name in names}, rule="uniform")


def save_ranks(result: RankResult, path: str | os.PathLike) -> None:
    """Write ``ranks.json`` (atomically: temp file then rename)."""
    write_json_atomic(path, result.to_dict())


def load_ranks(path: str | os.PathLike) -> RankResult:
    """Read a ``ranks.json`` written by `save_ranks`; every error names the file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"load_ranks: {path!r} does not exist; pass the ranks.json "
                                f"written by `autolora search`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"load_ranks: {path} is not a ranks.json written by `autolora search` (not valid JSON: "
                         f"{error})") from None
    return RankResult.from_dict(data, source=path)
