"""Retraining with the learned ranks: fresh PEFT LoRA on the whole training set (both search splits).

The model is a standard PEFT model built from the exported config (`autolora.export.peft_config_dict`), trained
with AdamW and a linear warmup/decay schedule, so the saved adapter is a plain PEFT adapter directory:

    result = retrain_lora(task.load_model(path), peft_config, task.train, task.collate, RetrainConfig())
    save_adapter(result.model, "out/adapter")      # PeftModel.from_pretrained(base, "out/adapter") loads it
"""
from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from bilevel.distributed import mean_across_ranks

from .config import RetrainConfig
from .distributed import ShardedLoader, average_gradients
from .export import build_peft_model
from .outputs import atomic_directory

__all__ = ["RetrainResult", "retrain_lora", "fit", "save_adapter", "save_merged", "retrain"]

logger = logging.getLogger(__name__)


@dataclass
class RetrainResult:
    """The trained PEFT model and what the training cost."""

    model: nn.Module
    steps: int
    wall_time_s: float
    trainable_parameters: int
    losses: list[tuple[int, float]] = field(default_factory=list)


def _schedule(optimizer: torch.optim.Optimizer, steps: int, warmup_ratio: float):
    warmup = int(round(steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def retrain_lora(model: nn.Module, peft_config: dict, train_dataset: Sequence, collate: Callable,
                 config: RetrainConfig, progress: bool = True, log_every: int = 10) -> RetrainResult:
    """Wrap ``model`` with fresh PEFT LoRA of ``peft_config`` and train it on ``train_dataset`` (in memory; the
    file-level step is `autolora.pipeline.retrain`)."""
    device = next(model.parameters()).device
    torch.manual_seed(config.seed)
    peft_model = build_peft_model(model, peft_config).to(device)
    return fit(peft_model, train_dataset, collate, config, progress=progress, log_every=log_every)


def retrain(*args, **kwargs) -> RetrainResult:
    """Deprecated name of `retrain_lora` (it clashed with the file-level `autolora.pipeline.retrain`)."""
    warnings.warn("autolora.retrain.retrain is deprecated: use autolora.retrain.retrain_lora", DeprecationWarning,
                  stacklevel=2)
    return retrain_lora(*args, **kwargs)


def fit(model: nn.Module, train_dataset: Sequence, collate: Callable, config: RetrainConfig,
        progress: bool = True, log_every: int = 10,
        after_step: Callable[[nn.Module, int], None] | None = None) -> RetrainResult:
    """Train every parameter of ``model`` that requires grad with AdamW and warmup/linear decay.

    ``after_step(model, step)`` runs after each optimizer step while the gradients are still there (AdaLoRA's
    ``update_and_allocate`` needs them).
    """
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    loader = ShardedLoader(train_dataset, collate, config.batch_size, config.seed, device)
    steps = config.max_steps or max(1, math.ceil(config.epochs * len(loader)))
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = _schedule(optimizer, steps, config.warmup_ratio)
    logger.info("retraining %d trainable parameters for %d steps on %d examples", trainable, steps,
                len(train_dataset))
    bar = _progress(steps, progress)
    losses, step = [], 0
    model.train()
    start = time.perf_counter()
    while step < steps:
        for batch in loader:
            loss = model(**batch).loss
            logged = mean_across_ranks({"loss": loss.detach()})["loss"]  # every rank stops together
            if not torch.isfinite(logged):
                raise FloatingPointError(f"retrain: non-finite loss at step {step + 1}; lower "
                                         f"--retrain-learning-rate (now {config.learning_rate})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(params)
            optimizer.step()
            scheduler.step()
            step += 1
            if after_step is not None:
                after_step(model, step)
            if step % log_every == 0 or step == steps:
                losses.append((step, float(logged)))
                if bar is not None:
                    bar.set_postfix(loss=f"{losses[-1][1]:.4g}")
            if step % max(1, steps // 10) == 0 or step == steps:
                logger.info("retrain step %d/%d: loss %.4g (%.1fs)", step, steps, float(logged),
                            time.perf_counter() - start)
            if bar is not None:
                bar.update(1)
            if step >= steps:
                break
    wall = time.perf_counter() - start
    if bar is not None:
        bar.close()
    model.eval()
    logger.info("retraining done in %.1fs", wall)
    return RetrainResult(model=model, steps=steps, wall_time_s=wall, trainable_parameters=trainable,
                         losses=losses)


def save_adapter(peft_model: nn.Module, path: str | os.PathLike) -> None:
    """Save the PEFT adapter directory atomically (a temp directory renamed into place).

    Next to the adapter goes the model's ``config.json`` as trained: its label names (``id2label``/``label2id``),
    ``num_labels`` and pad token, which the base checkpoint does not know. Reload with
    ``base = AutoModelForSequenceClassification.from_pretrained(base_path, config=AutoConfig.from_pretrained(path))``
    and ``PeftModel.from_pretrained(base, path)``.
    """
    with atomic_directory(path) as tmp:
        peft_model.save_pretrained(tmp)
        peft_model.get_base_model().config.save_pretrained(tmp)


def save_merged(peft_model: nn.Module, path: str | os.PathLike, tokenizer=None) -> nn.Module:
    """Merge the adapter into the weights (``merge_and_unload``) and save the plain model (and tokenizer).

    ``peft_model`` is consumed: its base model now holds the merged weights. Returns the merged model.
    """
    merged = peft_model.merge_and_unload()
    with atomic_directory(path) as tmp:
        merged.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return merged


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="retrain steps", dynamic_ncols=True)
