"""Learning rates chosen on the training data alone: each family's best rate on a held-out 15% of the training
rows, cached in ``calibration.json``."""
from __future__ import annotations

import json
import os

from autolora import search as search_module
from autolora.outputs import write_json_atomic

from .settings import Setting, TASKS, check_definition, definition
from .training import FAMILIES, train_family


def calibrate(name: str, task, setting: Setting, out: str, device, families) -> dict:
    """Best learning rate of each of ``families`` (as in FAMILIES) on a held-out 15% of the training rows; cached
    per family in calibration.json."""
    path = os.path.join(out, "calibration.json")
    cache = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            cache = json.load(f)
    if name in cache:
        check_definition(cache[name].get("setting"), setting, f"{path} ({name})", calibration=True)
    entry = cache.setdefault(name, {"setting": definition(setting, calibration=True), "held_out_scores": {}})
    fit_rows, held_out = search_module.split_train(task.train, setting.calibration_fraction, seed=1234)
    metric = TASKS[name]
    for family in families:
        key, grid = FAMILIES[family]
        if key in entry:
            continue
        scores = {}
        for lr in getattr(setting, grid):
            result = train_family(family, task, lr, 0, setting, fit_rows, device, entry.get("lora_lr"))
            scores[lr] = task.evaluate(result.model, held_out)[metric]
            print(f"  calibration {name} {family} lr={lr:g}: held-out {metric} {scores[lr]:.4f}", flush=True)
        entry[key] = max(scores, key=scores.get)
        entry["held_out_scores"][family] = {str(lr): round(v, 4) for lr, v in scores.items()}
        entry["held_out_rows"] = len(held_out)
        write_json_atomic(path, cache)
    return entry
