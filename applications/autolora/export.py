"""Learned ranks -> a PEFT ``LoraConfig`` (``peft_config.json``) and a PEFT model to retrain.

The exported dict is what ``peft.LoraConfig(**json.load(f))`` accepts: ``target_modules`` lists the full names
of the matrices with rank >= 1 (rank-0 matrices are left out), ``r`` is the most common rank and
``rank_pattern`` gives every other rank; ``modules_to_save`` names the task head. Scaling:

- ``rank_scaling="peft"``: one ``lora_alpha``, so a rank-r matrix is scaled by lora_alpha / r (PEFT's rule);
- ``rank_scaling="search"``: ``alpha_pattern`` sets lora_alpha * r / k per matrix, so every matrix keeps the
  search's scaling lora_alpha / k.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter

from torch import nn

from .config import AutoLoraConfig
from .outputs import write_json_atomic
from .ranks import RankResult

__all__ = ["peft_config_dict", "save_peft_config", "load_peft_config", "build_peft_model"]


def _pattern_key(name: str, all_names: list[str]) -> str:
    """A ``rank_pattern`` key that PEFT (``re.match(rf"(.*\\.)?({key})$", module)``) maps to ``name`` only."""
    for key in (name, re.escape(name)):
        hits = [n for n in all_names if re.match(rf"(.*\.)?({key})$", n)]
        if hits == [name]:
            return key
    return "^" + re.escape(name)


def peft_config_dict(ranks: RankResult, config: AutoLoraConfig, modules_to_save: list[str] | None = None,
                     task_kind: str | None = None, fan_in_fan_out: bool = False) -> dict:
    """The PEFT ``LoraConfig`` keyword arguments that reproduce the learned ranks.

    ``fan_in_fan_out`` must be True when the targets are GPT-2 ``Conv1D`` layers (weights stored (in, out)).
    ``task_kind`` (a kind of `autolora.tasks.TASK_KINDS`) sets ``task_type`` to its class's ``peft_task_type``.
    """
    active = {name: r for name, r in ranks.ranks.items() if r > 0}
    if not active:
        raise ValueError("peft_config_dict: every matrix got rank 0, so there is nothing to retrain; lower "
                         "--threshold or drop --allow-zero-rank")
    names = list(active)
    default_r = Counter(active.values()).most_common(1)[0][0]
    rank_pattern = {_pattern_key(n, list(ranks.ranks)): r for n, r in active.items() if r != default_r}
    if config.rank_scaling == "search":
        lora_alpha = config.lora_alpha * default_r / ranks.k
        alpha_pattern = {_pattern_key(n, list(ranks.ranks)): config.lora_alpha * r / ranks.k
                         for n, r in active.items() if r != default_r}
    else:
        lora_alpha, alpha_pattern = config.lora_alpha, {}
    out = {
        "r": default_r,
        "lora_alpha": lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": names,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "modules_to_save": list(modules_to_save) if modules_to_save else None,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
    }
    if task_kind is not None:
        from .tasks import task_class

        out["task_type"] = task_class(task_kind, "peft_config_dict").peft_task_type
    return out


def save_peft_config(config: dict, path: str | os.PathLike) -> None:
    """Write ``peft_config.json`` atomically."""
    write_json_atomic(path, config)


def load_peft_config(path: str | os.PathLike):
    """``peft.LoraConfig`` from a ``peft_config.json``."""
    from peft import LoraConfig

    with open(path, encoding="utf-8") as f:
        return LoraConfig(**json.load(f))


def build_peft_model(model: nn.Module, config: dict):
    """Fresh PEFT LoRA (Kaiming-uniform A, zero B) on ``model`` with the exported ranks."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(**config))
