"""The side-by-side table, the targets and the plot, from the checkpoints both runners record."""
from __future__ import annotations

import os
import statistics

TARGET_EVALUATIONS = 1.10   # ours reaches their final figure within 10% more evaluations
TARGET_WALL_TIME = 1.25     # ours per iteration within 1.25x of theirs on the larger problems
QUIET_MARGIN = 0.5          # 1-minute load average above the run's own threads at which its wall times were under load
ROUNDING = 1e-9             # figures this close (relative) are equal: two libraries' float64 rounding over a run


def _load(averages) -> str:
    return " ".join(f"{v:.2f}" for v in averages)


def evaluations(point: dict) -> int:
    """Gradient passes plus second-order passes: the x-axis of the evaluation plots."""
    return point["gradients"] + point["products"]


def fastest(runs: list) -> list:
    """The run whose last checkpoint has the fewest seconds; the runs must agree in every figure (the same batches
    give the same numbers), so that only the clock differs between them: on a shared machine noise only adds time."""
    figures = [[{k: v for k, v in p.items() if k != "seconds"} for p in points] for points in runs]
    assert all(f == figures[0] for f in figures), "a repeated run differs: the comparison needs deterministic runs"
    return min(runs, key=lambda points: points[-1]["seconds"])


def figure_name(points: list) -> str:
    """The figure that decides (lower is better): the first one the problem reports."""
    return next(k for k in points[0] if k not in ("step", "seconds", "gradients", "products"))


def first_reaching(points: list, level: float, name: str):
    """The first checkpoint whose figure is at or below ``level``, up to float64 rounding (None if none is)."""
    return next((p for p in points if p[name] <= level + ROUNDING * abs(level)), None)


def at_step(points: list, step: int) -> dict:
    """The checkpoint of ``step`` (a run may go on past the horizon of the comparison)."""
    return next(p for p in points if p["step"] == step)


def compare(ours: list, theirs: list) -> dict:
    """Ours against theirs on one solver: evaluations and steps to reach their final figure (ours may have run past
    their last step to reach it), our figure and time per iteration at their last step, and both sides' mean and sd of
    the figure over the second half of their checkpoints."""
    name = figure_name(theirs)
    level = theirs[-1][name]
    ours_at, theirs_at = first_reaching(ours, level, name), first_reaching(theirs, level, name)
    ours_n = None if ours_at is None else evaluations(ours_at)
    steps = theirs[-1]["step"]
    horizon = at_step(ours, steps)
    half = [p for p in ours if p["step"] <= steps][len(theirs) // 2:], theirs[len(theirs) // 2:]
    return {"figure": name, "level": level, "ours_evaluations": ours_n, "theirs_evaluations": evaluations(theirs_at),
            "evaluation_ratio": None if ours_n is None else ours_n / evaluations(theirs_at),
            "ours_steps": None if ours_at is None else ours_at["step"], "theirs_steps": theirs_at["step"],
            "ours_final": horizon[name], "ms_ours": 1e3 * horizon["seconds"] / steps,
            "ms_theirs": 1e3 * theirs[-1]["seconds"] / steps,
            "plateau": [(statistics.mean(v), statistics.pstdev(v)) for v in ([p[name] for p in h] for h in half)]}


def table(results: dict, loads: dict, threads: int = 1) -> str:
    """Markdown: one row per (problem, solver, side), then the targets per solver both sides have; ``loads`` maps a
    problem to its load averages before and after, the second as a number to mark wall times taken under load (a
    load above the run's own ``threads`` plus QUIET_MARGIN)."""
    lines = []
    for problem, rows in results.items():
        any_points = next(iter(rows.values()))
        name = figure_name(any_points)
        extra = [k for k in any_points[-1] if k not in ("step", "seconds", "gradients", "products", name)]
        steps = min(points[-1]["step"] for points in rows.values())  # the horizon; ours may run past it
        before, after = loads[problem]
        mark = ": wall times under load, decide nothing" if after[0] > threads + QUIET_MARGIN else ""
        lines += [f"\n### {problem} ({steps} outer steps; load average {_load(before)} -> {_load(after)}{mark})\n",
                  f"| solver | side | {name} | " + "".join(f"{k} | " for k in extra)
                  + "gradients / step | products / step | ms / step |", "|---|---|---|" + "---|" * len(extra)
                  + "---|---|---|"]
        for (solver, side), points in rows.items():
            last = at_step(points, steps)
            lines.append(f"| {solver} | {side} | {last[name]:.4g} | " + "".join(f"{last[k]:.4g} | " for k in extra)
                         + f"{last['gradients'] / last['step']:.1f} | {last['products'] / last['step']:.1f} | "
                         f"{1e3 * last['seconds'] / last['step']:.3f} |")
        pairs = [(s, rows[(s, "ours")], rows[(s, "theirs")]) for s, side in rows
                 if side == "theirs" and (s, "ours") in rows]
        if pairs:
            lines += ["", f"| solver | their final {name} | ours final | their evaluations (steps) to it | ours "
                      f"| ratio (target <= {TARGET_EVALUATIONS}) | last half mean (sd): ours / theirs "
                      "| ms / step ours / theirs |", "|---|---|---|---|---|---|---|---|"]
            for solver, ours_points, their_points in pairs:
                c = compare(ours_points, their_points)
                ratio = "not reached" if c["evaluation_ratio"] is None else f"{c['evaluation_ratio']:.2f}"
                reached = "-" if c["ours_evaluations"] is None else f"{c['ours_evaluations']} ({c['ours_steps']})"
                lines.append(f"| {solver} | {c['level']:.4g} | {c['ours_final']:.4g} | {c['theirs_evaluations']} "
                             f"({c['theirs_steps']}) | {reached} | {ratio} | {_plateau(c['plateau'])} "
                             f"| {c['ms_ours'] / c['ms_theirs']:.2f}x "
                             f"({c['ms_ours']:.3f} / {c['ms_theirs']:.3f}) |")
    return "\n".join(lines) + "\n"


def _plateau(pairs) -> str:
    """``mean (sd)`` of the figure over the second half of the checkpoints, ours / theirs: where a curve is flat
    within its noise, the first checkpoint to reach a level is decided by noise, and the level is what compares."""
    return " / ".join(f"{mean:.4g} ({sd:.2g})" for mean, sd in pairs)


def plot(results: dict, path: str) -> None:
    """Per problem: the figure against evaluations and against wall time; ours solid, theirs dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 3.6 * len(results)), squeeze=False)
    colours = {}
    for row, (problem, rows) in enumerate(results.items()):
        name = figure_name(next(iter(rows.values())))
        for (solver, side), points in rows.items():
            colour = colours.setdefault(solver, f"C{len(colours)}")
            style = "-" if side == "ours" else "--"
            label = f"{solver} ({side})"
            y = [p[name] for p in points]
            axes[row][0].plot([evaluations(p) for p in points], y, style, color=colour, label=label)
            axes[row][1].plot([p["seconds"] for p in points], y, style, color=colour, label=label)
        for col, xlabel in enumerate(("gradient + second-order evaluations", "seconds")):
            axes[row][col].set(xlabel=xlabel, ylabel=name, title=problem, xscale="log",
                               yscale="log" if name == "rel_error" else "linear")
    axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
