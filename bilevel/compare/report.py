"""The result of a comparison: one row per method run, as a Markdown table, a dict for JSON, and a plot."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class MethodReport:
    """One row of the comparison; ``error`` holds the message when the method failed (other fields are then nan)."""

    label: str
    relative_error: float = math.nan
    cosine: float = math.nan
    seconds: float = math.nan
    peak_bytes: float = math.nan
    passes: float = math.nan
    hvp: float = math.nan
    hvp_estimated: bool = False
    error: Optional[str] = None

    @property
    def cost(self) -> float:
        """Loss passes plus Hessian-vector products: the x axis of the plot."""
        return self.passes + self.hvp


@dataclass
class ComparisonReport:
    """The rows plus how they were measured."""

    problem: str
    description: str
    reference: str
    memory: str
    device: str
    rows: List[MethodReport] = field(default_factory=list)

    def table(self) -> str:
        """A Markdown table with a header that says what the reference and the memory column are."""
        named = f"{self.problem} ({self.description})" if self.description else self.problem
        lines = [f"problem: {named}", f"reference: {self.reference}",
                 f"memory: {self.memory}", f"device: {self.device}", "",
                 "| method | rel. error | cosine | time (ms) | peak memory (KiB) | passes | HVPs |",
                 "|---|---|---|---|---|---|---|"]
        for row in self.rows:
            if row.error is not None:
                lines.append(f"| {row.label} | failed: {row.error} | | | | | |")
                continue
            hvp = f"~{row.hvp:.0f}" if row.hvp_estimated else f"{row.hvp:.0f}"
            cosine = "n/a" if math.isnan(row.cosine) else f"{row.cosine:+.6f}"  # a zero hypergradient has no direction
            lines.append(f"| {row.label} | {row.relative_error:.3e} | {cosine} | {row.seconds * 1e3:.2f} | "
                         f"{row.peak_bytes / 1024:.1f} | {row.passes:.0f} | {hvp} |")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        return {"problem": self.problem, "description": self.description, "reference": self.reference,
                "memory": self.memory, "device": self.device,
                "rows": [dict(vars(row)) for row in self.rows]}

    def plot(self, path: str) -> bool:
        """Save relative error against cost (passes + HVPs); returns False when matplotlib is not installed."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        figure, axis = plt.subplots(figsize=(6.5, 4.5))
        families: Dict[str, list] = {}
        for row in self.rows:
            if row.error is None:
                families.setdefault(row.label.split(":")[0], []).append(row)
        floor = 1e-17  # exact answers would vanish from a log axis
        for family, rows in families.items():
            rows.sort(key=lambda r: r.cost)
            axis.plot([r.cost for r in rows], [max(r.relative_error, floor) for r in rows], marker="o", label=family)
            for r in rows:
                axis.annotate(r.label, (r.cost, max(r.relative_error, floor)), fontsize=7, xytext=(3, 3),
                              textcoords="offset points")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("cost: loss passes + Hessian-vector products")
        axis.set_ylabel("relative error")
        axis.set_title(f"{self.problem}: error vs cost (reference: {self.reference.split(' (')[0]})", fontsize=9)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return True
