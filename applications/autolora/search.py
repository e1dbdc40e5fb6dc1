"""The AutoLoRA rank search as a bilevel problem on `bilevel.Engine`.

Lower level: the LoRA weights A, B of every gated layer and the task head, trained by Adam on the lower split
(70% of the training data by default). Upper level: the selection logits, updated by Adam (betas 0.5, 0.999) on
the upper split (30%) with the hypergradient of the upper loss through one lower step. Each outer step is one
real lower step, then one hypergradient and one logit step, as in the original code.

With ``selection_split="train"`` the search is the paper's ablation without meta learning: the logits follow
the gradient of the training loss, on the same data as the LoRA weights.

The default method is ``finite_difference`` (DARTS' second-order approximation) with its virtual-step learning
rate equal to the LoRA learning rate; ``identity_implicit`` reproduces the original code's hypergradient, and any
method registered in `bilevel.methods` can be chosen. Both levels share one model: no copy of the model or its
state is made per step.

    model = task.load_model(path)
    result = search(model, task.train, task.collate, AutoLoraConfig(), SearchConfig(max_steps=200))
    result.ranks.ranks       # {"bert.encoder.layer.0.attention.self.query": 3, ...}
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

import bilevel
from bilevel.checkpoint import CHECKPOINT_NAME
from bilevel.checkpoint import load as load_checkpoint_file
from bilevel.distributed import world_size

from .config import AutoLoraConfig, SearchConfig
from .distributed import ShardedLoader, is_main
from .injection import gated_layers, inject_gated_lora, lower_parameters, upper_parameters
from .outputs import write_json_atomic
from .ranks import RankResult, compute_ranks

__all__ = ["LoraTraining", "GateSelection", "SearchResult", "Trajectory", "search", "split_train",
           "build_method"]

logger = logging.getLogger(__name__)


class LoraTraining(bilevel.Problem):
    """Lower level: the task loss of the model on the lower split, as a function of LoRA weights and head."""

    def loss(self, batch):
        return self(**batch).loss


class GateSelection(bilevel.Problem):
    """Upper level: the task loss on the upper split, as a function of the selection logits."""

    def loss(self, batch):
        return self.inner(**batch).loss


@dataclass
class Trajectory:
    """Softmax selection weights recorded during the search: ``weights[name][i]`` at ``steps[i]``."""

    steps: list[int] = field(default_factory=list)
    weights: dict[str, list[list[float]]] = field(default_factory=dict)

    def record(self, step: int, model: nn.Module) -> None:
        self.steps.append(step)
        for name, layer in gated_layers(model).items():
            with torch.no_grad():
                w = torch.softmax(layer.lora_logits.detach().float(), dim=-1)
            self.weights.setdefault(name, []).append([round(float(v), 6) for v in w])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SearchResult:
    """What the search learned and what it cost."""

    ranks: RankResult
    trajectory: Trajectory
    losses: dict[str, list[tuple[int, float]]]   # "inner_loss" / "outer_loss" -> [(step, value)]
    steps: int
    wall_time_s: float
    trainable_parameters: dict[str, int]          # {"inner": LoRA weights and head, "outer": selection logits}
    method: str


def split_train(dataset, fraction: float, seed: int):
    """Random (lower, upper) split of ``dataset`` with ``fraction`` of the rows in ``upper``."""
    n = len(dataset)
    n_upper = int(round(n * fraction))
    if n_upper < 1 or n - n_upper < 1:
        raise ValueError(f"split_train: {n} training examples cannot be split with validation_fraction={fraction}; "
                         "give more training data")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    lower_idx, upper_idx = sorted(order[n_upper:]), sorted(order[:n_upper])
    if hasattr(dataset, "select"):
        return dataset.select(lower_idx), dataset.select(upper_idx)
    return [dataset[i] for i in lower_idx], [dataset[i] for i in upper_idx]


def build_method(config: SearchConfig) -> bilevel.MethodSpec:
    """The hypergradient method of ``config``, checked (an unknown name or setting raises here). Settings it leaves
    out that the method declares (the inner learning rate; an unroll's optimizer) follow the LoRA weights' optimizer:
    the Engine fills them before every step."""
    spec = bilevel.MethodSpec(config.method, dict(config.method_kwargs))
    spec.build(inner_lr=config.learning_rate)
    return spec


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


def _check_resume_settings(checkpoint_dir: str, settings: dict) -> None:
    """Resuming with other settings (seed, batch, steps, method, number of ranks...) would silently differ."""
    path = os.path.join(checkpoint_dir, "settings.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--resume: no search checkpoint in {checkpoint_dir}; run without --resume "
                                "(--checkpoint-every N makes one)")
    with open(path, encoding="utf-8") as f:
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


def _last(engine: bilevel.Engine, key: str) -> str:
    """The last recorded value of ``key`` (recorded every ``record_every`` steps), or "-" before the first."""
    value = engine.history.last(key)
    return "-" if value is None else f"{value:.4g}"


def _count(params: dict[str, torch.Tensor]) -> int:
    return sum(p.numel() for p in params.values())


def search(model: nn.Module, train_dataset: Sequence, collate: Callable, config: AutoLoraConfig,
           search_config: SearchConfig, progress: bool = True,
           on_step: Callable[[bilevel.Engine, int], None] | None = None, checkpoint_dir: str | None = None,
           resume: bool = False) -> SearchResult:
    """Inject gated LoRA into ``model`` (in place, unless it already has gated layers), run the bilevel search,
    and threshold the gates.

    ``train_dataset`` holds tokenized rows (``collate`` pads a list of them into a batch); it is split into the
    lower and upper parts by ``search_config.validation_fraction``. The model stays on its device. With
    ``checkpoint_dir``, the Engine's full state (and the trajectory so far) is saved there every
    ``search_config.checkpoint_every`` steps and at the end; ``resume`` continues from it, bit for bit on CPU.
    """
    device = next(model.parameters()).device
    torch.manual_seed(search_config.seed)
    names = list(gated_layers(model)) or inject_gated_lora(model, config)
    model.to(device)
    logger.info("adapting %d matrices with k=%d: %s", len(names), config.k, ", ".join(names[:4]) +
                (", ..." if len(names) > 4 else ""))
    lower_params, upper_params = lower_parameters(model), upper_parameters(model)
    if search_config.selection_split == "train":  # ablation: one level, the logits trained on the training loss
        lower_data = upper_data = train_dataset
        method, method_name = bilevel.methods.get("first_order"), "joint (no meta learning)"
    else:
        lower_data, upper_data = split_train(train_dataset, search_config.validation_fraction, search_config.seed)
        method = build_method(search_config)
        method_name = bilevel.methods.get(method.name).name  # the registered name of an alias
    lower_loader = ShardedLoader(lower_data, collate, search_config.batch_size, search_config.seed, device)
    upper_loader = ShardedLoader(upper_data, collate, search_config.batch_size, search_config.seed + 1, device)
    steps = search_config.max_steps or max(1, math.ceil(search_config.epochs * len(lower_loader)))
    logger.info("search: %d outer steps, method %s, %d inner / %d outer examples", steps, method_name,
                len(lower_data), len(upper_data))

    lower = LoraTraining(module=model, params=lower_params, data=lower_loader, name="lora_weights",
                         optimizer=torch.optim.Adam(list(lower_params.values()), lr=search_config.learning_rate,
                                                    weight_decay=search_config.weight_decay))
    upper = GateSelection(module=model, params=upper_params, data=upper_loader, name="selection_logits",
                          optimizer=torch.optim.Adam(list(upper_params.values()), lr=search_config.alpha_learning_rate,
                                                     betas=tuple(search_config.alpha_betas),
                                                     weight_decay=search_config.alpha_weight_decay))
    trajectory = Trajectory()
    trajectory.record(0, model)

    log_every = max(1, steps // 10)

    trajectory_path = os.path.join(checkpoint_dir, "trajectory.json") if checkpoint_dir else None

    def record(engine: bilevel.Engine, step: int) -> None:
        if step % search_config.record_every == 0 or step == steps:
            trajectory.record(step, model)
        if trajectory_path and is_main() and (step == steps or (search_config.checkpoint_every and
                                                                step % search_config.checkpoint_every == 0)):
            write_json_atomic(trajectory_path, trajectory.to_dict())  # the checkpoint of this step follows
        if step % log_every == 0 or step == steps:
            logger.info("search step %d/%d: inner loss %s, outer loss %s (last recorded; %.1fs)", step, steps,
                        _last(engine, "inner_loss"), _last(engine, "outer_loss"), time.perf_counter() - start)
        if on_step is not None:
            on_step(engine, step)

    engine = bilevel.Engine(inner=lower, outer=upper, method=method, on_step=record,
                            config=bilevel.EngineConfig(outer_steps=steps, inner_steps=1,
                                                        warmup_inner_steps=search_config.warmup_steps,
                                                        log_every=search_config.record_every,
                                                        seed=search_config.seed, progress=progress,
                                                        reuse_inner_gradient=search_config.reuse_inner_gradient,
                                                        checkpoint_dir=checkpoint_dir,
                                                        checkpoint_every=search_config.checkpoint_every if
                                                        checkpoint_dir else 0))
    if checkpoint_dir:
        settings = resume_settings(config, search_config, len(train_dataset))
        if resume:
            _check_resume_settings(checkpoint_dir, settings)
            if not engine.load_checkpoint():
                raise FileNotFoundError(f"--resume: no search checkpoint in {checkpoint_dir}; run without --resume "
                                        "(--checkpoint-every N makes one)")
            _restore_trajectory(trajectory, trajectory_path, engine.step)
            logger.info("search: resumed at step %d/%d from %s", engine.step, steps, checkpoint_dir)
        elif is_main():
            write_json_atomic(os.path.join(checkpoint_dir, "settings.json"), settings)
    model.train()
    start = time.perf_counter()
    engine.run()
    wall = time.perf_counter() - start
    model.eval()
    ranks = compute_ranks(model, config.threshold, config.allow_zero_rank, rule=config.rank_rule,
                          budget=config.budget)
    logger.info("search done in %.1fs; ranks %s", wall, list(ranks.ranks.values()))
    losses = {key: [(int(s), float(v)) for s, v in engine.history.series(key)]
              for key in ("inner_loss", "outer_loss")}
    return SearchResult(ranks=ranks, trajectory=trajectory, losses=losses, steps=steps, wall_time_s=wall,
                        trainable_parameters={"inner": _count(lower_params), "outer": _count(upper_params)},
                        method=method_name)
