"""The run report: a rank heatmap (layers x adapted matrices, as in the AutoLoRA paper's figure), the evidence
behind every rank (the rule and its budget, how far each matrix's gates left uniform, the importance scores), the
selection weights during the search, and the metrics, as ``report.html`` with the PNGs embedded (also saved
alongside).

    write_report("out/")    # reads ranks.json, search.json, metrics.json; writes report.html + *.png

How far the gates a = softmax(alpha) (length k) left uniform, per matrix:

- concentration ``1 - H(a) / log k`` with ``H(a) = -sum_j a_j log a_j``: 0 for uniform gates, 1 for one-hot;
- effective number of components ``exp(H(a))``: k for uniform gates, 1 for one-hot;
- spread ``max_j |k a_j - 1|``: how far the furthest gate moved from 1/k, relative to 1/k.

Near uniform, the concentration is about ``mean_j (k a_j - 1)^2 / (2 log k)``. The report warns when the median
concentration over the matrices is below `NEAR_UNIFORM_CONCENTRATION` = 0.005, that is when the gates sit within
about 12-17% (root mean square, k = 4 to 16) of 1/k: which side of 1/k a gate then ends on is mostly noise.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import statistics
from dataclasses import dataclass

from .outputs import write_bytes_atomic

__all__ = ["NEAR_UNIFORM_CONCENTRATION", "NEAR_UNIFORM_WARNING", "GateSeparation", "gate_concentration",
           "effective_components", "gate_spread", "gate_separation", "rank_grid", "plot_rank_heatmap",
           "plot_trajectories", "rule_description", "write_report"]

NEAR_UNIFORM_CONCENTRATION = 0.005   # median concentration below which the report calls the gates near uniform
NEAR_UNIFORM_WARNING = ("The gates stayed near uniform, so these ranks are mostly noise; search longer or raise "
                        "the gate learning rate (--alpha-learning-rate).")


def _entropy(gates: list[float]) -> float:
    return -sum(a * math.log(a) for a in gates if a > 0)


def gate_concentration(gates: list[float]) -> float:
    """``1 - H(a) / log k``: 0 for uniform gates, 1 for one-hot; NaN for k = 1 (nothing to separate)."""
    k = len(gates)
    return math.nan if k < 2 else 1.0 - _entropy(gates) / math.log(k)


def effective_components(gates: list[float]) -> float:
    """``exp(H(a))``, the number of components the gates effectively spread over (k when uniform)."""
    return math.exp(_entropy(gates))


def gate_spread(gates: list[float]) -> float:
    """``max_j |k a_j - 1|``: the furthest gate's distance from 1/k, relative to 1/k."""
    k = len(gates)
    return max(abs(k * a - 1.0) for a in gates)


@dataclass
class GateSeparation:
    """How far the gates of all matrices left uniform, summarised; ``near_uniform`` triggers the warning."""

    median_concentration: float
    median_effective_components: float
    max_spread: float
    k: int

    @property
    def near_uniform(self) -> bool:
        return self.median_concentration < NEAR_UNIFORM_CONCENTRATION


def gate_separation(weights: dict[str, list[float]]) -> GateSeparation | None:
    """The summary of every matrix's final gates (``ranks.json``'s ``weights``); None without gates or for k = 1."""
    gates = [list(map(float, g)) for g in weights.values() if len(g) >= 2]
    if not gates:
        return None
    return GateSeparation(median_concentration=statistics.median(gate_concentration(g) for g in gates),
                          median_effective_components=statistics.median(effective_components(g) for g in gates),
                          max_spread=max(gate_spread(g) for g in gates), k=len(gates[0]))


def rank_grid(ranks: dict[str, int]) -> tuple[list[str], list[str], list[list[float]]]:
    """(row labels, column labels, values) with a row per layer index and a column per matrix kind.

    ``bert.encoder.layer.3.attention.self.query`` -> row ``3``, column ``attention.self.query``; names without
    a layer index get a row of their own. Missing cells are NaN.
    """
    cells: dict[tuple[str, str], int] = {}
    for name, rank in ranks.items():
        match = re.search(r"\.(\d+)\.(.+)$", name)
        row, col = (match.group(1), match.group(2)) if match else (name, "matrix")
        cells[(row, col)] = rank
    rows = sorted({r for r, _ in cells}, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else 0, r))
    cols = list(dict.fromkeys(c for _, c in cells))
    values = [[cells.get((r, c), math.nan) for c in cols] for r in rows]
    return rows, cols, values


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def plot_rank_heatmap(ranks: dict[str, int], k: int, title: str = "Learned ranks") -> bytes:
    """PNG bytes of the rank heatmap with the rank written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, cols, values = rank_grid(ranks)
    data = np.array(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(cols), 0.9 + 0.38 * len(rows)))
    image = ax.imshow(data, cmap="viridis", vmin=0, vmax=k, aspect="auto")
    ax.set_xticks(range(len(cols)), [c.rsplit(".", 1)[-1] for c in cols])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("adapted matrix")
    ax.set_ylabel("layer")
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not math.isnan(data[i, j]):
                ax.text(j, i, str(int(data[i, j])), ha="center", va="center",
                        color="white" if data[i, j] < 0.6 * k else "black")
    fig.colorbar(image, ax=ax, label="rank")
    ax.set_title(title)
    return _figure_png(fig)


def plot_trajectories(steps: list[int], weights: dict[str, list[list[float]]], threshold: float | None) -> bytes:
    """PNG bytes: one small panel per adapted matrix with its k softmax weights over the search steps.

    ``threshold`` (the threshold rule's) is drawn dashed; a rule without one draws 1/k dotted instead.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(weights)
    ncols = min(4, max(1, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.2 * nrows), squeeze=False, sharex=True)
    for index, name in enumerate(names):
        ax = axes[index // ncols][index % ncols]
        series = list(zip(*weights[name]))  # k sequences over the recorded steps
        for j, values in enumerate(series):
            ax.plot(steps, values, lw=1, label=f"{j}")
        if threshold is not None:
            ax.axhline(threshold, color="black", ls="--", lw=0.8)
        elif series:
            ax.axhline(1.0 / len(series), color="grey", ls=":", lw=0.8)
        ax.set_title(re.sub(r"^.*?(\d+\..*)$", r"\1", name), fontsize=7)
        ax.tick_params(labelsize=6)
    for index in range(len(names), nrows * ncols):
        axes[index // ncols][index % ncols].axis("off")
    fig.supxlabel("search step")
    fig.supylabel("selection weight (softmax)")
    fig.suptitle("Selection weights during the search ("
                 + (f"dashed: threshold {threshold:.3g})" if threshold is not None else "dotted: 1/k)"))
    fig.tight_layout()
    return _figure_png(fig)


def _read(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _table(data: dict, prefix: str = "") -> str:
    rows = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows.append(_table(value, f"{prefix}{key}."))
        else:
            shown = f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
            rows.append(f"<tr><td>{html.escape(prefix + str(key))}</td><td>{shown}</td></tr>")
    return "".join(rows)


def rule_description(ranks: dict) -> str:
    """One line on how ``ranks.json``'s ranks were chosen: the rule and its threshold or budget."""
    rule, k = ranks.get("rule"), ranks["k"]
    if rule is None:   # written before ranks.json recorded its rule: the threshold rule was the only one
        return (f"threshold (not recorded: this ranks.json predates the rank rules, when it was the only rule); "
                f"threshold {ranks.get('threshold') or 1 / k:.3g}, k = {k}; total rank "
                f"{sum(ranks['ranks'].values())} over {len(ranks['ranks'])} matrices")
    if rule == "uniform":
        values = sorted(set(ranks["ranks"].values()))
        return (f"uniform: rank {', '.join(map(str, values))} on every matrix, no search (the uniform LoRA "
                f"baseline of `autolora retrain --uniform-rank`)")
    parts = [f"{rule}, k = {k}"]
    if ranks.get("threshold") is not None:
        parts.append(f"threshold {ranks['threshold']:.3g}" + (" (1/k)" if math.isclose(ranks["threshold"], 1 / k)
                                                               else ""))
    budget = ranks.get("budget") or {}
    if budget.get("total_rank") is not None:
        parts.append(f"budget: total rank {budget['total_rank']}")
    if budget.get("parameters") is not None:
        parts.append(f"budget: {budget['parameters']:,} LoRA parameters")
    if ranks.get("importance") and ranks.get("importance_score"):
        parts.append(f"importance score: {ranks['importance_score']}")
    parts.append(f"total rank {sum(ranks['ranks'].values())} over {len(ranks['ranks'])} matrices")
    parts.append("rank 0 allowed" if ranks.get("allow_zero_rank") else "at least rank 1 each")
    return "; ".join(parts)


def _numbers(values: list[float] | None, digits: int = 3) -> str:
    return "&mdash;" if not values else " ".join(f"{v:.{digits}g}" for v in values)


def _evidence_section(ranks: dict) -> str:
    """The rule, the gate-separation summary (with the warning) and the per-matrix evidence table."""
    weights, importance = ranks.get("weights") or {}, ranks.get("importance") or {}
    notes = []
    separation = gate_separation(weights)
    if separation is not None:
        summary = (f"Gate concentration (1 - H/log k, 0 = uniform): median {separation.median_concentration:.3g} "
                   f"(warning below {NEAR_UNIFORM_CONCENTRATION}); effective components exp(H): median "
                   f"{separation.median_effective_components:.3g} of k = {separation.k}; largest |k a_j - 1|: "
                   f"{separation.max_spread:.3g}.")
    elif ranks.get("rule") == "uniform":
        summary = "No search, so no gates: the same rank everywhere."
    else:
        summary = "This ranks.json records no gates."
    score = ranks.get("importance_score") or ("contribution" if importance else "")  # unnamed before "spectrum"
    if separation is not None and separation.near_uniform:
        warning = NEAR_UNIFORM_WARNING
        if ranks.get("rule") not in (None, "threshold") and score != "gate":
            warning += (" The importance scores scale with the gates but also with the LoRA weights, so this "
                        "rule's ranks follow those more than the search's selection.")
        notes.append(f"<p class='warning'><b>Warning.</b> {html.escape(warning)}</p>")
    if ranks.get("rule") != "uniform" and not importance:
        notes.append("<p class='note'>No importance scores: this ranks.json was written before they were "
                     "recorded.</p>")
    rows = []
    for name, rank in ranks["ranks"].items():
        gates = weights.get(name)
        measures = ([gate_concentration(gates), effective_components(gates), gate_spread(gates)]
                    if gates else [])
        cells = [html.escape(name), str(rank), html.escape(" ".join(map(str, ranks.get("kept", {}).get(name, []))))]
        cells += [f"{v:.3g}" for v in measures] if measures else ["&mdash;"] * 3
        cells += [_numbers(gates), _numbers(importance.get(name))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in ("module", "rank", "kept", "concentration", "exp(H)",
                                               "max |k a<sub>j</sub> - 1|", "gates a",
                                               f"importance{' (' + html.escape(score) + ')' if score else ''}"))
    return (f"<h2>How the ranks were chosen</h2><p><b>Rule:</b> {html.escape(rule_description(ranks))}</p>"
            f"<p>{html.escape(summary)}</p>{''.join(notes)}"
            f"<h2>Ranks and the evidence behind them</h2><table class='evidence'><tr>{header}</tr>{''.join(rows)}"
            "</table><p class='note'>kept: the threshold rule's indices are gates; a budgeted rule's index the "
            "importance scores (with the spectrum score, the singular values of the gated update, largest first). "
            "concentration: 1 - H(a)/log k (0 = uniform gates, 1 = one-hot); exp(H): the effective number of "
            "components (k when uniform); max |k a<sub>j</sub> - 1|: the furthest gate's distance from 1/k, "
            "relative to 1/k.</p>")


def write_report(output_dir: str) -> str:
    """Write ``report.html`` (and ``rank_heatmap.png``, ``trajectories.png``) from a run directory's files.

    Needs ``ranks.json`` (any version: files written before the rank rules, the uniform baseline's); uses
    ``search.json`` (trajectories) and ``metrics.json`` when present.
    """
    ranks = _read(os.path.join(output_dir, "ranks.json"))
    if ranks is None:
        raise FileNotFoundError(f"report: {output_dir!r} has no ranks.json; run `autolora search` or "
                                "`autolora run` with this --output-dir first")
    search = _read(os.path.join(output_dir, "search.json")) or {}
    metrics = _read(os.path.join(output_dir, "metrics.json")) or {}
    threshold = ranks.get("threshold")
    title = f"Learned ranks (k={ranks['k']}, " + (f"threshold {threshold:.3g})" if threshold is not None
                                                   else f"rule {ranks.get('rule', 'threshold')})")
    heatmap = plot_rank_heatmap(ranks["ranks"], ranks["k"], title=title)
    write_bytes_atomic(os.path.join(output_dir, "rank_heatmap.png"), heatmap)
    images = [("Learned ranks", heatmap)]
    trajectory = search.get("trajectory")
    if trajectory and trajectory.get("steps") and ranks.get("rule") != "uniform":
        png = plot_trajectories(trajectory["steps"], trajectory["weights"], threshold)
        write_bytes_atomic(os.path.join(output_dir, "trajectories.png"), png)
        images.append(("Selection weights during the search", png))
    figures = "".join(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
                      f"src='data:image/png;base64,{base64.b64encode(png).decode()}'/>" for title, png in images)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>AutoLoRA report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td{{padding:2px 10px}}
img{{max-width:100%}}table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}
.warning{{background:#fff3cd;border:1px solid #d39e00;padding:0.6em}}.note{{color:#555}}
table.evidence td{{font-size:85%;vertical-align:top}}</style></head>
<body><h1>AutoLoRA report</h1><p>{html.escape(os.path.abspath(output_dir))}</p>
{_evidence_section(ranks)}
<h2>Metrics</h2><table>{_table(metrics)}</table>{figures}</body></html>
"""
    path = os.path.join(output_dir, "report.html")
    write_bytes_atomic(path, page.encode("utf-8"))
    return path
