"""From selection weights to ranks, and the ``ranks.json`` file that carries them.

Rule (AutoLoRA): a matrix keeps the components whose softmax weight is >= threshold (default 1/k); the rank is
their count. With ``allow_zero_rank=False`` a matrix with no such component keeps its strongest one (rank 1);
with ``allow_zero_rank=True`` it gets rank 0 and is dropped from the retraining.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from .injection import gated_layers
from .outputs import write_json_atomic

__all__ = ["RankResult", "select_components", "compute_ranks", "save_ranks", "load_ranks"]

RANKS_FORMAT_VERSION = 1


def select_components(weights: torch.Tensor | list[float], threshold: float,
                      allow_zero_rank: bool = False) -> list[int]:
    """Indices (ascending) of the components kept from one matrix's softmax ``weights``."""
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


@dataclass
class RankResult:
    """The learned ranks and the evidence behind them (what ``ranks.json`` holds)."""

    ranks: dict[str, int]
    k: int
    threshold: float
    allow_zero_rank: bool
    weights: dict[str, list[float]] = field(default_factory=dict)   # final softmax weights per module
    kept: dict[str, list[int]] = field(default_factory=dict)        # kept component indices per module

    def to_dict(self) -> dict:
        return {"format_version": RANKS_FORMAT_VERSION, "k": self.k, "threshold": self.threshold,
                "allow_zero_rank": self.allow_zero_rank, "ranks": self.ranks, "weights": self.weights,
                "kept": self.kept}

    @classmethod
    def from_dict(cls, data: dict) -> "RankResult":
        missing = [key for key in ("ranks", "k", "threshold") if key not in data]
        if missing:
            raise ValueError(f"ranks.json: missing key(s) {missing}; expected a file written by `autolora search`")
        ranks = {str(name): int(r) for name, r in data["ranks"].items()}
        bad = {name: r for name, r in ranks.items() if not 0 <= r <= int(data["k"])}
        if bad:
            raise ValueError(f"ranks.json: ranks must be in [0, k={data['k']}], got {bad}")
        return cls(ranks=ranks, k=int(data["k"]), threshold=float(data["threshold"]),
                   allow_zero_rank=bool(data.get("allow_zero_rank", False)),
                   weights=dict(data.get("weights", {})), kept=dict(data.get("kept", {})))

    @property
    def total_rank(self) -> int:
        return sum(self.ranks.values())


def compute_ranks(model: nn.Module, threshold: float, allow_zero_rank: bool = False) -> RankResult:
    """Threshold the selection weights of every `GatedLoraLinear` in ``model``."""
    layers = gated_layers(model)
    if not layers:
        raise ValueError("compute_ranks: the model has no GatedLoraLinear layers; call inject_gated_lora first")
    weights, kept, ranks = {}, {}, {}
    k = None
    for name, layer in layers.items():
        with torch.no_grad():
            w = torch.softmax(layer.lora_logits.detach().double(), dim=-1)
        weights[name] = [float(v) for v in w]
        kept[name] = select_components(w, threshold, allow_zero_rank)
        ranks[name] = len(kept[name])
        k = layer.k
    return RankResult(ranks=ranks, k=k, threshold=threshold, allow_zero_rank=allow_zero_rank,
                      weights=weights, kept=kept)


def save_ranks(result: RankResult, path: str | os.PathLike) -> None:
    """Write ``ranks.json`` (atomically: temp file then rename)."""
    write_json_atomic(path, result.to_dict())


def load_ranks(path: str | os.PathLike) -> RankResult:
    """Read a ``ranks.json`` written by `save_ranks`."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"load_ranks: {os.fspath(path)!r} does not exist; pass the ranks.json "
                                f"written by `autolora search`") from None
    return RankResult.from_dict(data)
