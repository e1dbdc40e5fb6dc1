"""Statistics and the table: mean +- std over seeds, each difference to AutoLoRA against the seed noise, the
seed agreement of the searched ranks, and ``table.md``."""
from __future__ import annotations

import math
import statistics

from .settings import METHODS, Setting, TARGETS, TASKS
from .training import FAMILIES


# ---------------------------------------------------------------------------------------------------------- table
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


# two-sided 95% quantile of Student's t by degrees of freedom (seeds - 1)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def difference_to(values: dict[int, float], reference: dict[int, float]) -> str:
    """Mean difference to AutoLoRA over the seeds both have (paired: a seed fixes the head initialisation and the
    batch order of every method), with the half-width of its 95% t interval; beyond noise when the interval
    excludes 0."""
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        return ""
    differences = [values[s] - reference[s] for s in seeds]
    delta = statistics.fmean(differences)
    if len(seeds) < 2:
        return f"{delta:+.3f} (1 seed)"
    half = T_975.get(len(seeds) - 1, 1.96) * statistics.stdev(differences) / math.sqrt(len(seeds))
    return f"{delta:+.3f} +- {half:.3f} ({'beyond' if abs(delta) > half else 'within'} noise)"


def seed_agreement(rank_vectors: list[list[int]]) -> float | None:
    """Mean Pearson correlation, over pairs of seeds, of the per-matrix ranks: near 0 when the searched rank
    pattern is seed noise, near 1 when every seed finds the same pattern (None without two varying vectors)."""
    vectors = [v for v in rank_vectors if len(set(v)) > 1]
    pairs = [statistics.correlation(a, b) for i, a in enumerate(vectors) for b in vectors[i + 1:]]
    return statistics.fmean(pairs) if pairs else None


def _rank_agreement(runs: list[dict]) -> str:
    agreement = seed_agreement([r["ranks"] for r in runs])
    return "" if agreement is None else f", seed agreement {agreement:+.2f}"


def render_table(records: list[dict], setting_name: str, setting: Setting, calibration: dict) -> str:
    by = {}
    for r in records:
        by.setdefault((r["task"], r["method"]), []).append(r)
    tasks = [t for t in TASKS if any(k[0] == t for k in by)]
    lines = [f"Setting `{setting_name}`: {setting.steps} steps of batch {setting.batch_size} per final model, "
             f"AutoLoRA search {setting.search_steps} steps, max length {setting.max_length}, seeds "
             f"{list(setting.seeds)}, "
             f"{'a learning rate per method' if setting.lr_per_method else 'one LoRA learning rate'}, targets "
             f"{setting.targets} ({', '.join(TARGETS[setting.targets])}).", ""]
    for name in tasks:
        metric = TASKS[name]
        lrs = calibration.get(name, {})
        labels = {"lora_r8": "LoRA r8 and the search" if setting.lr_per_method else "LoRA", "full": "full",
                  "adalora": "AdaLoRA", "autolora": "AutoLoRA retraining"}
        rates = ", ".join(f"{labels.get(family, family)} lr {lrs[key]}" for family, (key, _) in FAMILIES.items()
                          if key in lrs)
        # the column of paired differences is against AutoLoRA, or its budgeted variant when AutoLoRA did not run
        anchor = "autolora" if by.get((name, "autolora")) or not by.get((name, "autolora_budget")) else \
            "autolora_budget"
        lines += [f"**{name}** ({metric}{' and spearmanr' if name == 'stsb' else ''}; {rates}, each chosen on "
                  "held-out training rows)", "",
                  f"| method | seeds | {metric} mean +- std | vs {anchor} (paired, 95% CI) | "
                  f"{'spearmanr | ' if name == 'stsb' else ''}trainable params | wall s (search + train) | ranks |",
                  "|---|---|---|---|" + ("---|" if name == "stsb" else "") + "---|---|---|"]
        reference = {r["seed"]: r["metrics"][metric] for r in by.get((name, anchor), [])}
        for method in METHODS:
            runs = by.get((name, method))
            if not runs:
                continue
            values = [r["metrics"][metric] for r in runs]
            mean, std = _mean_std(values)
            spear = ""
            if name == "stsb":
                s_mean, s_std = _mean_std([r["metrics"]["spearmanr"] for r in runs])
                spear = f"{s_mean:.3f} +- {s_std:.3f} | "
            ranks = ""
            if "mean_rank" in runs[0]:
                ranks = f"mean {statistics.fmean(r['mean_rank'] for r in runs):.2f}{_rank_agreement(runs)}"
            elif "target_r" in runs[0]:
                ranks = f"target_r {runs[0]['target_r']}"
            versus = "-" if method == anchor else difference_to({r["seed"]: r["metrics"][metric] for r in runs},
                                                                reference)
            lines.append(f"| {method} | {len(runs)} | {mean:.3f} +- {std:.3f} | {versus} | {spear}"
                         f"{statistics.fmean(r['trainable'] for r in runs):,.0f} | "
                         f"{statistics.fmean(r['wall_s'] for r in runs):.1f} | {ranks} |")
        lines.append("")
    lines += _summary(by, tasks)
    lines += ["", "**Every run** (wall seconds; the search is AutoLoRA's rank search; reused: taken over from "
              "the other learning-rate protocol's folder, where it ran at the same rate)", "",
              "| task | method | seed | metric | search s | train s | eval s | lr |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['method']}{' (reused)' if 'reused_from' in r else ''} | {r['seed']} | "
              f"{r['metrics'][TASKS[r['task']]]:.4f} | {r['search_wall_s']:.1f} | {r['train_wall_s']:.1f} | "
              f"{r['eval_wall_s']:.1f} | {r['lr']:g} |"
              for r in records]
    return "\n".join(lines) + "\n"


def _task_mean(by: dict, tasks: list[str], method: str, value) -> float:
    """Mean over ``tasks`` of the per-task mean over seeds of ``value(record, task)``."""
    return statistics.fmean(statistics.fmean(value(r, t) for r in by[(t, method)]) for t in tasks)


def _seed_averages(by: dict, tasks: list[str], method: str) -> dict[int, float]:
    """Seed -> the primary metric averaged over ``tasks``, for the seeds that ran on every task."""
    per_task = [{r["seed"]: r["metrics"][TASKS[t]] for r in by[(t, method)]} for t in tasks]
    seeds = set.intersection(*(set(scores) for scores in per_task))
    return {seed: statistics.fmean(scores[seed] for scores in per_task) for seed in seeds}


def _summary(by: dict, tasks: list[str]) -> list[str]:
    """Average over tasks, the targets, and the cost of the grid against one AutoLoRA run; the equal-budget
    comparison when autolora_budget ran."""
    complete = [m for m in METHODS if all(by.get((t, m)) for t in tasks)]
    if not tasks:
        return []
    if "autolora" not in complete:
        return _equal_budget_summary(by, tasks, complete)
    average = {m: _task_mean(by, tasks, m, lambda r, t: r["metrics"][TASKS[t]]) for m in complete}
    params = {m: _task_mean(by, tasks, m, lambda r, t: r["trainable"]) for m in complete}
    wall = {m: _task_mean(by, tasks, m, lambda r, t: r["wall_s"]) for m in complete}
    lines = ["**Summary** (average of the primary metric over " + ", ".join(tasks) + ")", "",
             "| method | average | trainable params (mean over tasks) |", "|---|---|---|"]
    lines += [f"| {m} | {average[m]:.3f} | {params[m]:,.0f} |" for m in complete]
    grid = [m for m in complete if m.startswith("lora_r")]
    lines.append("")
    if grid:
        best = max(grid, key=average.get)
        grid_cost = sum(wall[m] for m in grid)
        lora_cost = statistics.fmean(wall[m] for m in grid)
        versus = difference_to(_seed_averages(by, tasks, best), _seed_averages(by, tasks, "autolora"))
        lines += [f"- AutoLoRA average {average['autolora']:.3f} vs the best uniform rank {best} "
                  f"{average[best]:.3f} (an oracle: the rank picked on these evaluation results, which favours the "
                  f"grid): {'met' if average['autolora'] >= average[best] else 'NOT met'}; {best} - autolora "
                  f"= {versus}.",
                  f"- AutoLoRA trainable parameters {params['autolora']:,.0f} vs r=8 "
                  f"{params.get('lora_r8', float('nan')):,.0f}: "
                  f"{'met' if params['autolora'] <= params.get('lora_r8', math.inf) else 'NOT met'}.",
                  f"- Cost: one AutoLoRA run (search + retrain) {wall['autolora']:.0f} s = "
                  f"{wall['autolora'] / lora_cost:.2f} LoRA runs (target <= 2: "
                  f"{'met' if wall['autolora'] <= 2 * lora_cost else 'NOT met'}); the rank grid "
                  f"{{{', '.join(m[len('lora_r'):] for m in grid)}}} costs {grid_cost:.0f} s = "
                  f"{grid_cost / wall['autolora']:.2f} AutoLoRA runs."]
    if "lora_shuffled" in complete:
        versus = difference_to(_seed_averages(by, tasks, "autolora"), _seed_averages(by, tasks, "lora_shuffled"))
        lines.append(f"- The search against a random placement of the same ranks: autolora {average['autolora']:.3f}, "
                     f"lora_shuffled {average['lora_shuffled']:.3f}; autolora - lora_shuffled = {versus}.")
    return lines + _equal_budget_summary(by, tasks, complete, header=False)


def _equal_budget_summary(by: dict, tasks: list[str], complete: list[str], header: bool = True) -> list[str]:
    """autolora_budget against uniform r = 8 and against its own ranks shuffled among same-shape matrices: all
    three at (nearly) the same parameter count."""
    if "autolora_budget" not in complete:
        return []
    average = {m: _task_mean(by, tasks, m, lambda r, t: r["metrics"][TASKS[t]]) for m in complete}
    params = {m: _task_mean(by, tasks, m, lambda r, t: r["trainable"]) for m in complete}
    lines = ["**Equal budget** (average of the primary metric over " + ", ".join(tasks) + ")", "",
             "| method | average | trainable params (mean over tasks) |", "|---|---|---|"] if header else []
    lines += [f"| {m} | {average[m]:.3f} | {params[m]:,.0f} |" for m in complete if header]
    lines += [""] if header else []
    for other in ("lora_r8", "lora_shuffled_budget"):
        if other in complete:
            versus = difference_to(_seed_averages(by, tasks, "autolora_budget"), _seed_averages(by, tasks, other))
            lines.append(f"- autolora_budget {average['autolora_budget']:.3f} ({params['autolora_budget']:,.0f} "
                         f"params) vs {other} {average[other]:.3f} ({params[other]:,.0f} params): "
                         f"autolora_budget - {other} = {versus}.")
    return lines
