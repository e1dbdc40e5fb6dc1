"""Probes instead of the comparison: ``--find-budget`` (the baselines' held-out scores as the step budget grows)
and ``--search-probe`` (how the searched ranks' agreement across seeds grows with the search length)."""
from __future__ import annotations

import dataclasses
import os
import statistics
import time

from autolora import search as search_module
from autolora.outputs import write_json_atomic
from autolora.ranks import select_components

from .settings import K, Setting, TASKS
from .table import seed_agreement
from .training import FAMILIES, run_search, train_family


def find_budget(name: str, task, setting: Setting, out: str, device, multiples=(1, 2, 4, 8)) -> list[dict]:
    """Held-out score of LoRA r = 8 and full fine-tuning as the budget grows (``multiples`` of the setting's
    steps), at the learning rates of the grids, on the calibration split of the training rows only.

    For a task whose calibration stays at the trivial score: how long must the baselines train before they learn?
    Results go to budget.json.
    """
    fit_rows, held_out = search_module.split_train(task.train, setting.calibration_fraction, seed=1234)
    metric, rows = TASKS[name], []
    for multiple in multiples:
        longer = dataclasses.replace(setting, steps=setting.steps * multiple)
        for kind in ("lora_r8", "full"):
            for lr in getattr(setting, FAMILIES[kind][1]):
                start = time.perf_counter()
                result = train_family(kind, task, lr, 0, longer, fit_rows, device)
                score = task.evaluate(result.model, held_out)[metric]
                rows.append({"task": name, "method": kind, "lr": lr, "steps": longer.steps, metric: round(score, 4),
                             "wall_s": round(time.perf_counter() - start, 1)})
                print(f"  budget {name} {kind} lr={lr:g} steps={longer.steps}: held-out {metric} {score:.4f}",
                      flush=True)
                write_json_atomic(os.path.join(out, "budget.json"), rows)
    return rows


def search_probe(name: str, task, setting: Setting, lr: float, out: str, device, steps: int,
                 seeds=(0, 1, 2), record_every: int = 10) -> list[dict]:
    """How long must the search run before its ranks stop being seed noise? One search of ``steps`` steps per
    seed (training file only); at every recorded step, the ranks the gates would give then, their agreement
    across seeds (`seed_agreement`) and the gates' spread. The search has no schedule, so the state at step s of a
    long search is the final state of an s-step search. Results go to search_probe_<task>.json."""
    weights = {}                                   # seed -> matrix -> [gate weights at each recorded step]
    for seed in seeds:
        start = time.perf_counter()
        found, _ = run_search(task, "autolora", lr, seed, setting, steps, device, record_every)
        weights[seed], recorded = found.trajectory.weights, found.trajectory.steps
        print(f"  probe {name} seed {seed}: {steps} search steps in {time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for index, step in enumerate(recorded):
        per_seed = [[len(select_components(w[index], 1.0 / K)) for w in weights[seed].values()] for seed in seeds]
        spread = statistics.fmean(max(abs(v * K - 1) for v in w[index]) for seed in seeds
                                  for w in weights[seed].values())
        agreement = seed_agreement(per_seed)
        mean_rank = statistics.fmean(map(statistics.fmean, per_seed))
        rows.append({"task": name, "step": step, "mean_rank": round(mean_rank, 3),
                     "seed_agreement": None if agreement is None else round(agreement, 3),
                     "gate_spread": round(spread, 4), "ranks": per_seed})
        print(f"  probe {name} step {step}: mean rank {rows[-1]['mean_rank']}, seed agreement "
              f"{rows[-1]['seed_agreement']}, gate spread max|k a - 1| {spread:.3f}", flush=True)
    write_json_atomic(os.path.join(out, f"search_probe_{name}.json"), rows)
    return rows
