"""The run report: a rank heatmap (layers x adapted matrices, as in the AutoLoRA paper's figure), the selection
weights during the search, and the metrics, as ``report.html`` with the PNGs embedded (also saved alongside).

    write_report("out/")    # reads ranks.json, search.json, metrics.json; writes report.html + *.png
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re

from .outputs import write_bytes_atomic

__all__ = ["rank_grid", "plot_rank_heatmap", "plot_trajectories", "write_report"]


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


def plot_trajectories(steps: list[int], weights: dict[str, list[list[float]]], threshold: float) -> bytes:
    """PNG bytes: one small panel per adapted matrix with its k softmax weights over the search steps."""
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
        ax.axhline(threshold, color="black", ls="--", lw=0.8)
        ax.set_title(re.sub(r"^.*?(\d+\..*)$", r"\1", name), fontsize=7)
        ax.tick_params(labelsize=6)
    for index in range(len(names), nrows * ncols):
        axes[index // ncols][index % ncols].axis("off")
    fig.supxlabel("search step")
    fig.supylabel("selection weight (softmax)")
    fig.suptitle(f"Selection weights during the search (dashed: threshold {threshold:.3g})")
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


def write_report(output_dir: str) -> str:
    """Write ``report.html`` (and ``rank_heatmap.png``, ``trajectories.png``) from a run directory's files.

    Needs ``ranks.json``; uses ``search.json`` (trajectories) and ``metrics.json`` when present.
    """
    ranks = _read(os.path.join(output_dir, "ranks.json"))
    if ranks is None:
        raise FileNotFoundError(f"report: {output_dir!r} has no ranks.json; run `autolora search` or "
                                "`autolora run` with this --output-dir first")
    search = _read(os.path.join(output_dir, "search.json")) or {}
    metrics = _read(os.path.join(output_dir, "metrics.json")) or {}
    heatmap = plot_rank_heatmap(ranks["ranks"], ranks["k"],
                                title=f"Learned ranks (k={ranks['k']}, threshold {ranks['threshold']:.3g})")
    write_bytes_atomic(os.path.join(output_dir, "rank_heatmap.png"), heatmap)
    images = [("Learned ranks", heatmap)]
    trajectory = search.get("trajectory")
    if trajectory and trajectory.get("steps"):
        png = plot_trajectories(trajectory["steps"], trajectory["weights"], ranks["threshold"])
        write_bytes_atomic(os.path.join(output_dir, "trajectories.png"), png)
        images.append(("Selection weights during the search", png))
    figures = "".join(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
                      f"src='data:image/png;base64,{base64.b64encode(png).decode()}'/>" for title, png in images)
    rank_rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{r}</td></tr>" for n, r in ranks["ranks"].items())
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>AutoLoRA report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td{{padding:2px 10px}}
img{{max-width:100%}}table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}</style></head>
<body><h1>AutoLoRA report</h1><p>{html.escape(os.path.abspath(output_dir))}</p>
<h2>Metrics</h2><table>{_table(metrics)}</table>{figures}
<h2>Ranks</h2><table><tr><th>module</th><th>rank</th></tr>{rank_rows}</table></body></html>
"""
    path = os.path.join(output_dir, "report.html")
    write_bytes_atomic(path, page.encode("utf-8"))
    return path
