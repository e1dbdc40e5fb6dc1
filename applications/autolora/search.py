"""The AutoLoRA rank search as a bilevel problem on `bilevel.Engine`, in memory (no files: the pipeline's
`autolora.search_checkpoint` adds the checkpoint folder).

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

A method that needs second derivatives (``soba`` with its default exact products, ``cg``, ``unroll``...) runs SDPA
attention on its math kernel, which has them; on a model whose attention has none (FlashAttention-2) the search
refuses it before step 1 and names the setting that avoids them (`check_second_derivatives`).

    model = task.load_model(path)
    result = search_ranks(model, task.train, task.collate, AutoLoraConfig(), SearchConfig(max_steps=200))
    result.ranks.ranks       # {"bert.encoder.layer.0.attention.self.query": 3, ...}
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

import bilevel
from bilevel.attention_kernels import SecondDerivativeError, check_second_order_support

from .config import AutoLoraConfig, SearchConfig
from .distributed import ShardedLoader
from .injection import gated_layers, inject_gated_lora, lower_parameters, upper_parameters
from .ranks import RankResult, compute_ranks

__all__ = ["LoraTraining", "GateSelection", "SearchResult", "Trajectory", "RankSearch", "search_ranks",
           "build_search_engine", "search_method", "split_train", "build_method", "check_second_derivatives",
           "first_order_fix", "search"]

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
    """The hypergradient method of ``config``, checked: ``config.method_spec()``."""
    return config.method_spec()


def first_order_fix(search_config: SearchConfig) -> str:
    """The flag that runs the configured method without second derivatives: the method's own setting that switches
    its products to finite differences when it has one (SOBA's ``hessian``), else the finite-difference method.

    The method is asked, not a table: each setting is tried at ``"finite_difference"`` and kept when the method then
    declares ``needs_second_derivatives`` false.
    """
    kwargs = dict(search_config.method_kwargs)
    factory = type(bilevel.methods.get(search_config.method, **kwargs))
    settings = [f.name for f in dataclasses.fields(factory) if f.init] if dataclasses.is_dataclass(factory) else []
    for setting in settings:
        candidate = {**kwargs, setting: "finite_difference"}
        try:
            if not bilevel.methods.get(search_config.method, **candidate).needs_second_derivatives:
                return f"--method-kwargs '{json.dumps(candidate)}'"
        except (TypeError, ValueError):  # not a setting that takes this value
            continue
    return "--method finite_difference"


def check_second_derivatives(model: nn.Module, search_config: SearchConfig) -> None:
    """Refuse a method that needs second derivatives when ``model``'s attention has no double backward
    (FlashAttention-2; SDPA is run on its math kernel, which has one), naming the fix in the command line's words::

        --method soba: method 'soba' needs second derivatives, but ... uses attn_implementation='flash_attention_2'
        ...; in autolora: --method-kwargs '{"hessian": "finite_difference"}'
    """
    method, _ = search_method(search_config)
    if isinstance(method, bilevel.MethodSpec):
        method = method.build(inner_lr=search_config.learning_rate)
    if not method.needs_second_derivatives:
        return
    try:
        check_second_order_support(model, method.name)
    except SecondDerivativeError as error:
        raise SecondDerivativeError(f"--method {search_config.method}: {error}; in autolora: "
                                    f"{first_order_fix(search_config)}") from None


def _last(engine: bilevel.Engine, key: str) -> str:
    """The last recorded value of ``key`` (recorded every ``record_every`` steps), or "-" before the first."""
    value = engine.history.last(key)
    return "-" if value is None else f"{value:.4g}"


def _count(params: dict[str, torch.Tensor]) -> int:
    return sum(p.numel() for p in params.values())




def search_method(search_config: SearchConfig) -> tuple:
    """The outer level's method and its name in the records: the configured hypergradient method (checked), or
    plain gradients of the training loss for the ablation without meta learning (``selection_split="train"``)."""
    if search_config.selection_split == "train":
        return bilevel.methods.get("first_order"), "joint (no meta learning)"
    method = build_method(search_config)
    return method, bilevel.methods.get(method.name).name  # the registered name of an alias


def build_search_engine(model: nn.Module, lower_data, upper_data, search_config: SearchConfig, steps: int = 1,
                        progress: bool = False, on_step: Callable[[bilevel.Engine, int], None] | None = None,
                        checkpoint_dir: str | None = None) -> bilevel.Engine:
    """The search's Engine on a model that has gated layers: the LoRA weights and head (Adam on ``lower_data``)
    below, the selection logits (Adam with ``alpha_betas`` on ``upper_data``) above, the method of
    `search_method`; ``steps`` outer steps of one inner step each. ``engine.iteration()`` is one search step.

    ``lower_data``/``upper_data`` are anything the Engine draws batches from (a `ShardedLoader`, a list of batches).
    A method that ``model``'s attention cannot run is refused here (`check_second_derivatives`).
    """
    check_second_derivatives(model, search_config)
    lower_params, upper_params = lower_parameters(model), upper_parameters(model)
    lower = LoraTraining(module=model, params=lower_params, data=lower_data, name="lora_weights",
                         optimizer=torch.optim.Adam(list(lower_params.values()), lr=search_config.learning_rate,
                                                    weight_decay=search_config.weight_decay))
    upper = GateSelection(module=model, params=upper_params, data=upper_data, name="selection_logits",
                          optimizer=torch.optim.Adam(list(upper_params.values()), lr=search_config.alpha_learning_rate,
                                                     betas=tuple(search_config.alpha_betas),
                                                     weight_decay=search_config.alpha_weight_decay))
    method, _ = search_method(search_config)
    return bilevel.Engine(inner=lower, outer=upper, method=method, on_step=on_step,
                          config=bilevel.EngineConfig(outer_steps=steps, inner_steps=1,
                                                      warmup_inner_steps=search_config.warmup_steps,
                                                      log_every=search_config.record_every,
                                                      seed=search_config.seed, progress=progress,
                                                      reuse_inner_gradient=search_config.reuse_inner_gradient,
                                                      checkpoint_dir=checkpoint_dir,
                                                      checkpoint_every=search_config.checkpoint_every if
                                                      checkpoint_dir else 0))


class RankSearch:
    """One rank search, built and ready to run: gated LoRA injected into ``model`` (in place, unless it already has
    gated layers), the training rows split into the two levels, the Engine (``engine``) and the selection weights
    recorded so far (``trajectory``). `run` runs it and thresholds the gates.

    Building and running are apart so that a caller can restore a checkpoint in between
    (`autolora.search_checkpoint`). ``on_step(engine, step)`` runs after each outer step, once it is recorded.
    """

    def __init__(self, model: nn.Module, train_dataset: Sequence, collate: Callable, config: AutoLoraConfig,
                 search_config: SearchConfig, progress: bool = True,
                 on_step: Callable[[bilevel.Engine, int], None] | None = None, checkpoint_dir: str | None = None):
        self.model, self.config, self.search_config, self.on_step = model, config, search_config, on_step
        device = next(model.parameters()).device
        torch.manual_seed(search_config.seed)
        names = list(gated_layers(model)) or inject_gated_lora(model, config)
        model.to(device)
        logger.info("adapting %d matrices with k=%d: %s", len(names), config.k, ", ".join(names[:4]) +
                    (", ..." if len(names) > 4 else ""))
        if search_config.selection_split == "train":  # ablation: one level, the logits trained on the training loss
            lower_data = upper_data = train_dataset
        else:
            lower_data, upper_data = split_train(train_dataset, search_config.validation_fraction, search_config.seed)
        _, self.method_name = search_method(search_config)
        lower_loader = ShardedLoader(lower_data, collate, search_config.batch_size, search_config.seed, device)
        upper_loader = ShardedLoader(upper_data, collate, search_config.batch_size, search_config.seed + 1, device)
        self.steps = search_config.max_steps or max(1, math.ceil(search_config.epochs * len(lower_loader)))
        logger.info("search: %d outer steps, method %s, %d inner / %d outer examples", self.steps, self.method_name,
                    len(lower_data), len(upper_data))
        self.trajectory = Trajectory()
        self.trajectory.record(0, model)
        self._log_every = max(1, self.steps // 10)
        self._start = time.perf_counter()
        self.engine = build_search_engine(model, lower_loader, upper_loader, search_config, steps=self.steps,
                                          progress=progress, on_step=self._record, checkpoint_dir=checkpoint_dir)

    def _record(self, engine: bilevel.Engine, step: int) -> None:
        if step % self.search_config.record_every == 0 or step == self.steps:
            self.trajectory.record(step, self.model)
        if step % self._log_every == 0 or step == self.steps:
            logger.info("search step %d/%d: inner loss %s, outer loss %s (last recorded; %.1fs)", step, self.steps,
                        _last(engine, "inner_loss"), _last(engine, "outer_loss"), time.perf_counter() - self._start)
        if self.on_step is not None:
            self.on_step(engine, step)

    def run(self) -> SearchResult:
        """Run the remaining outer steps and threshold the gates."""
        self.model.train()
        self._start = time.perf_counter()
        self.engine.run()
        wall = time.perf_counter() - self._start
        self.model.eval()
        ranks = compute_ranks(self.model, self.config.threshold, self.config.allow_zero_rank,
                              rule=self.config.rank_rule, budget=self.config.budget)
        logger.info("search done in %.1fs; ranks %s", wall, list(ranks.ranks.values()))
        losses = {key: [(int(s), float(v)) for s, v in self.engine.history.series(key)]
                  for key in ("inner_loss", "outer_loss")}
        return SearchResult(ranks=ranks, trajectory=self.trajectory, losses=losses, steps=self.steps,
                            wall_time_s=wall, method=self.method_name,
                            trainable_parameters={"inner": _count(self.engine.inner.params),
                                                  "outer": _count(self.engine.outer.params)})


def search_ranks(model: nn.Module, train_dataset: Sequence, collate: Callable, config: AutoLoraConfig,
                 search_config: SearchConfig, progress: bool = True,
                 on_step: Callable[[bilevel.Engine, int], None] | None = None) -> SearchResult:
    """Inject gated LoRA into ``model`` (in place, unless it already has gated layers), run the bilevel search in
    memory, and threshold the gates.

    ``train_dataset`` holds tokenized rows (``collate`` pads a list of them into a batch); it is split into the
    lower and upper parts by ``search_config.validation_fraction``. The model stays on its device. A search that
    checkpoints into a folder and resumes from it: `autolora.search_checkpoint.search_with_checkpoints`.
    """
    return RankSearch(model, train_dataset, collate, config, search_config, progress=progress, on_step=on_step).run()


def search(*args, **kwargs) -> SearchResult:
    """Deprecated name of `search_ranks` (it clashed with the file-level `autolora.pipeline.search`); with
    ``checkpoint_dir``/``resume`` it is `autolora.search_checkpoint.search_with_checkpoints`."""
    warnings.warn("autolora.search.search is deprecated: use autolora.search.search_ranks, or "
                  "autolora.search_checkpoint.search_with_checkpoints to checkpoint and resume",
                  DeprecationWarning, stacklevel=2)
    from .search_checkpoint import search_with_checkpoints

    return search_with_checkpoints(*args, **kwargs)
