"""The search's checkpoint folder (``<output-dir>/search_checkpoint/``), the file side of a resumable search.

``settings.json`` is written when a search starts: what a resumed search must share with the one that wrote the
checkpoint. ``trajectory.json`` (the selection weights so far) is written at every checkpoint step, just before the
Engine's own ``checkpoint.pt``. `search_with_checkpoints` runs `autolora.search.RankSearch` with them, and resumes
from them bit for bit on CPU:

    result = search_with_checkpoints(model, task.train, task.collate, AutoLoraConfig(), SearchConfig(
        max_steps=200, checkpoint_every=50), checkpoint_dir="out/search_checkpoint", resume=True)
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence

from torch import nn

import bilevel
from bilevel.checkpoint import CHECKPOINT_NAME
from bilevel.checkpoint import load as load_checkpoint_file
from bilevel.distributed import world_size

from .config import AutoLoraConfig, SearchConfig
from .distributed import is_main
from .outputs import write_json_atomic
from .search import RankSearch, SearchResult, Trajectory

__all__ = ["search_with_checkpoints", "resume_settings", "check_resumable", "require_checkpoint", "SETTINGS_NAME",
           "TRAJECTORY_NAME"]

SETTINGS_NAME = "settings.json"
TRAJECTORY_NAME = "trajectory.json"

logger = logging.getLogger(__name__)


def resume_settings(config: AutoLoraConfig, search_config: SearchConfig, train_examples: int) -> dict:
    """What a resumed search must share with the one that wrote the checkpoint (all but how often it saves)."""
    settings = json.loads(json.dumps({"autolora": config.to_dict(), "search": search_config.to_dict(),
                                      "world_size": world_size(), "train_examples": train_examples}))
    settings["search"].pop("checkpoint_every")
    return settings


def check_resumable(checkpoint_dir: str, config: AutoLoraConfig, search_config: SearchConfig,
                    train_examples: int) -> None:
    """Refuse --resume, before anything is written, without a checkpoint, with other settings, or with a checkpoint
    that cannot be read."""
    _check_resume_settings(checkpoint_dir, resume_settings(config, search_config, train_examples))
    if load_checkpoint_file(os.path.join(checkpoint_dir, CHECKPOINT_NAME)) is None:
        raise FileNotFoundError(f"--resume: no search checkpoint in {checkpoint_dir}; run without --resume "
                                "(--checkpoint-every N makes one)")


def require_checkpoint(checkpoint_dir: str) -> None:
    """--resume needs the checkpoint a search with --checkpoint-every leaves (its settings.json comes first)."""
    if not os.path.exists(os.path.join(checkpoint_dir, SETTINGS_NAME)):
        raise FileNotFoundError(f"--resume: no search checkpoint in {checkpoint_dir}; run without --resume "
                                "(--checkpoint-every N makes one)")


def _check_resume_settings(checkpoint_dir: str, settings: dict) -> None:
    """Resuming with other settings (seed, batch, steps, method, number of ranks...) would silently differ."""
    require_checkpoint(checkpoint_dir)
    with open(os.path.join(checkpoint_dir, SETTINGS_NAME), encoding="utf-8") as f:
        saved = json.load(f)
    old, new = _flatten(saved), _flatten(settings)
    changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    if changed:
        raise ValueError(f"--resume: the checkpoint in {checkpoint_dir} was written with other settings "
                         f"({', '.join(changed)}); resume with the same settings or start afresh")


def _flatten(settings: dict) -> dict:
    """{"search": {"seed": 1}, "world_size": 2} -> {"search.seed": 1, "world_size": 2}."""
    flat = {}
    for group, value in settings.items():
        if isinstance(value, dict):
            flat.update({f"{group}.{key}": v for key, v in value.items()})
        else:
            flat[group] = value
    return flat


def _restore_trajectory(trajectory: Trajectory, path: str, step: int) -> None:
    """The trajectory up to the checkpoint's ``step`` (a kill between the two writes leaves the file ahead)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--resume: the checkpoint has no {path}; start afresh without --resume")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    keep = [i for i, s in enumerate(saved["steps"]) if s <= step]
    trajectory.steps = [saved["steps"][i] for i in keep]
    trajectory.weights = {name: [w[i] for i in keep] for name, w in saved["weights"].items()}


def search_with_checkpoints(model: nn.Module, train_dataset: Sequence, collate: Callable, config: AutoLoraConfig,
                            search_config: SearchConfig, progress: bool = True,
                            on_step: Callable[[bilevel.Engine, int], None] | None = None,
                            checkpoint_dir: str | None = None, resume: bool = False) -> SearchResult:
    """`autolora.search.search_ranks` that, with ``checkpoint_dir``, saves the Engine's full state and the
    trajectory so far there every ``search_config.checkpoint_every`` steps and at the end; ``resume`` continues
    from them (refused without a checkpoint or with other settings)."""
    if checkpoint_dir is None:
        return RankSearch(model, train_dataset, collate, config, search_config, progress=progress,
                          on_step=on_step).run()
    trajectory_path = os.path.join(checkpoint_dir, TRAJECTORY_NAME)
    every = search_config.checkpoint_every

    def save_trajectory(engine: bilevel.Engine, step: int) -> None:
        if is_main() and (step == rank_search.steps or (every and step % every == 0)):
            write_json_atomic(trajectory_path, rank_search.trajectory.to_dict())  # the checkpoint of this step follows
        if on_step is not None:
            on_step(engine, step)

    rank_search = RankSearch(model, train_dataset, collate, config, search_config, progress=progress,
                             on_step=save_trajectory, checkpoint_dir=checkpoint_dir)
    settings = resume_settings(config, search_config, len(train_dataset))
    if resume:
        _check_resume_settings(checkpoint_dir, settings)
        if not rank_search.engine.load_checkpoint():
            raise FileNotFoundError(f"--resume: no search checkpoint in {checkpoint_dir}; run without --resume "
                                    "(--checkpoint-every N makes one)")
        _restore_trajectory(rank_search.trajectory, trajectory_path, rank_search.engine.step)
        logger.info("search: resumed at step %d/%d from %s", rank_search.engine.step, rank_search.steps,
                    checkpoint_dir)
    elif is_main():
        write_json_atomic(os.path.join(checkpoint_dir, SETTINGS_NAME), settings)
    return rank_search.run()
