"""The Python API behind the CLI: `search`, `retrain`, `run` (both, then the report) and `report`.

    from autolora import pipeline
    from autolora.config import AutoLoraConfig, DataConfig, RetrainConfig, RunConfig, SearchConfig

    metrics = pipeline.run(RunConfig(model_name_or_path="path/to/model", output_dir="out"),
                           DataConfig(train_file="train.jsonl", validation_file="dev.jsonl"),
                           AutoLoraConfig(), SearchConfig(max_steps=300), RetrainConfig(epochs=2))

Files written into ``output_dir`` (each atomically): ``config.json`` (every setting), ``ranks.json``,
``peft_config.json``, ``search.json`` (trajectories, losses), ``adapter/`` (PEFT adapter), ``merged/`` (with
``merge=True``), ``metrics.json``, ``report.html`` with ``rank_heatmap.png`` and ``trajectories.png``; with
``SearchConfig.checkpoint_every`` also ``search_checkpoint/`` (`autolora.search_checkpoint`), from which
``RunConfig.resume`` continues. The in-memory steps underneath: `autolora.search.search_ranks` and
`autolora.retrain.retrain_lora`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import torch

from bilevel.distributed import world_size

from . import distributed
from . import report as report_module
from . import retrain as retrain_module
from . import search as search_module
from . import search_checkpoint
from .config import AutoLoraConfig, RetrainConfig, RunConfig, SearchConfig
from .export import peft_config_dict, save_peft_config
from .injection import heads_of, target_module_names
from .layers import linear_features
from .outputs import check_output_dir, prepare_output_dir, write_bytes_atomic, write_json_atomic
from .rank_rules import check_budget
from .ranks import RankResult, load_ranks, save_ranks, uniform_ranks

__all__ = ["search", "retrain", "run", "report", "resolve_device", "load_task"]

logger = logging.getLogger(__name__)


PREDICTIONS = "predictions_test.jsonl"  # an unlabeled test split's predictions, beside metrics.json


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; other names as given (checked to exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def load_task(run_config: RunConfig, data_config):
    """Tokenizer and `Task` for the run's model and data."""
    from .tasks import build_task, load_tokenizer

    if not run_config.progress:
        import datasets

        datasets.disable_progress_bars()
    if not run_config.model_name_or_path:
        raise ValueError("--model-name-or-path is required: a Hugging Face model name or a local directory")
    tokenizer = load_tokenizer(run_config.model_name_or_path)
    return build_task(data_config, tokenizer)


def _output_dir(run_config: RunConfig) -> str:
    if not run_config.output_dir:
        raise ValueError("--output-dir is required")
    return run_config.output_dir


def _update_json(path: str, updates: dict, drop: tuple[str, ...] = ()) -> dict:
    """Merge ``updates`` into the JSON object at ``path`` (created if absent), without the keys ``drop``."""
    data = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    for key in drop:
        data.pop(key, None)
    data.update(updates)
    write_json_atomic(path, data)
    return data


def _label_scaling(task) -> dict:
    """Regression models predict standardized labels: record how to map their outputs back."""
    if not hasattr(task, "label_mean"):
        return {}
    return {"label_scaling": {"mean": task.label_mean, "std": task.label_std,
                              "note": "prediction = model output * std + mean"}}


def _device(run_config: RunConfig) -> torch.device:
    """This process's device; joins the process group when launched by torchrun."""
    return distributed.setup(resolve_device(run_config.device))


def _load_model(run_config: RunConfig, task, seed: int):
    """The task's model on the run's device; seeded first, since a new task head is initialised at load."""
    torch.manual_seed(seed)
    return task.load_model(run_config.model_name_or_path).to(_device(run_config))


def _is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D"


def _export(ranks: RankResult, config: AutoLoraConfig, model, task_kind: str) -> dict:
    heads = heads_of(model, config)
    modules = dict(model.named_modules())
    fan_in_fan_out = any(_is_conv1d(getattr(modules.get(n), "base_layer", modules.get(n))) for n in ranks.ranks)
    return peft_config_dict(ranks, config, modules_to_save=heads, task_kind=task_kind,
                            fan_in_fan_out=fan_in_fan_out)


def search(run_config: RunConfig, data_config, config: AutoLoraConfig, search_config: SearchConfig,
           task=None) -> RankResult:
    """Search the ranks; writes ranks.json, peft_config.json, search.json, metrics.json and config.json.

    Everything that can be refused (the output folder, the data, the model, the targets, the rank budget) is
    checked before the first byte is written.
    """
    out = _output_dir(run_config)
    _device(run_config)
    distributed.on_main(check_output_dir, out, run_config.overwrite or run_config.resume)
    checkpoint_dir = (os.path.join(out, "search_checkpoint") if search_config.checkpoint_every or run_config.resume
                      else None)
    if run_config.resume:
        distributed.on_main(search_checkpoint.require_checkpoint, checkpoint_dir)
    task = task or load_task(run_config, data_config)
    model = _load_model(run_config, task, search_config.seed)
    check_targets(model, config)
    search_module.check_second_derivatives(model, search_config)   # a method the model's attention cannot run
    if run_config.resume:  # other settings or an unreadable checkpoint: refused before the records are touched
        distributed.on_main(search_checkpoint.check_resumable, checkpoint_dir, config, search_config,
                            len(task.train))
    distributed.on_main(prepare_output_dir, out, run_config.overwrite or run_config.resume)
    distributed.on_main(_start_records, out, {
        "run": run_config.to_dict(), "data": data_config.to_dict(), "autolora": config.to_dict(),
        "search": search_config.to_dict()})
    result = search_checkpoint.search_with_checkpoints(model, task.train, task.collate, config, search_config,
                                                       progress=run_config.progress and distributed.is_main(),
                                                       checkpoint_dir=checkpoint_dir, resume=run_config.resume)
    distributed.on_main(_write_search, out, result, config, model, task)
    return result.ranks


def check_targets(model, config: AutoLoraConfig) -> list[str]:
    """Refuse targets that match nothing and a rank budget no allocation over them can meet."""
    names = target_module_names(model, config)
    if config.budget is not None:
        modules = dict(model.named_modules())
        check_budget(config.budget, {n: linear_features(modules[n]) for n in names}, config.k,
                     config.allow_zero_rank)
    return names


def _start_records(out: str, settings: dict) -> None:
    """A new search starts the run's records afresh: config.json with ``settings``, no stale metrics."""
    for stale in ("metrics.json", "config.json"):
        if os.path.exists(os.path.join(out, stale)):
            os.remove(os.path.join(out, stale))
    _update_json(os.path.join(out, "config.json"), settings)


def _write_search(out: str, result, config: AutoLoraConfig, model, task) -> None:
    save_ranks(result.ranks, os.path.join(out, "ranks.json"))
    save_peft_config(_export(result.ranks, config, model, task.kind), os.path.join(out, "peft_config.json"))
    write_json_atomic(os.path.join(out, "search.json"), {
        "method": result.method, "steps": result.steps, "trajectory": result.trajectory.to_dict(),
        "losses": result.losses})
    _update_json(os.path.join(out, "metrics.json"), {
        "task": {"kind": task.kind, "primary_metric": task.primary_metric, "train_examples": len(task.train),
                 **_label_scaling(task)},
        "search": {"method": result.method, "steps": result.steps, "wall_time_s": round(result.wall_time_s, 2),
                   "trainable_parameters": result.trainable_parameters,
                   "ranks_total": result.ranks.total_rank, "matrices": len(result.ranks.ranks)}})


def retrain(run_config: RunConfig, data_config, config: AutoLoraConfig, retrain_config: RetrainConfig,
            ranks: str | RankResult | None = None, task=None, uniform_rank: int | None = None) -> dict:
    """Retrain fresh PEFT LoRA with the learned ranks, evaluate, save ``adapter/`` (and ``merged/``).

    ``ranks`` is a ranks.json path or a `RankResult` (default: ``<output_dir>/ranks.json``); ``uniform_rank``
    instead gives every target matrix of ``config`` that rank (the uniform-LoRA baseline). An existing
    ``adapter/`` in the output directory is replaced only with ``overwrite``. Returns metrics.json's content.
    """
    out = _output_dir(run_config)
    _device(run_config)
    if uniform_rank is not None and ranks is not None:
        raise ValueError("retrain: give --ranks or --uniform-rank, not both")
    distributed.on_main(_check_retrain_output, out, run_config.overwrite, create=False)
    source = "ranks"   # how errors name the ranks: the file they came from, when they came from one
    if uniform_rank is None and not isinstance(ranks, RankResult):
        path = ranks or os.path.join(out, "ranks.json")
        source, ranks = f"--ranks {path}", load_ranks(path)
        if ranks.total_rank == 0:
            raise ValueError(f"{source}: every matrix has rank 0, so there is nothing to retrain; pass ranks with "
                             "at least one rank >= 1 (or --uniform-rank R)")
    task = task or load_task(run_config, data_config)
    model = _load_model(run_config, task, retrain_config.seed)
    if uniform_rank is not None:
        ranks = uniform_ranks(target_module_names(model, config), uniform_rank, config.k)
    missing = [n for n in ranks.ranks if n not in dict(model.named_modules())]
    if missing:
        raise ValueError(f"{source} names {len(missing)} module(s) {run_config.model_name_or_path} lacks "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); were they searched on "
                         "another model?")
    exported = _export(ranks, config, model, task.kind)
    distributed.on_main(_check_retrain_output, out, run_config.overwrite)
    distributed.on_main(_update_json, os.path.join(out, "config.json"), {
        "run": run_config.to_dict(), "data": data_config.to_dict(), "autolora": config.to_dict(),
        "retrain": retrain_config.to_dict(), **({"uniform_rank": uniform_rank} if uniform_rank else {})})
    if uniform_rank is not None:
        distributed.on_main(save_ranks, ranks, os.path.join(out, "ranks.json"))
    distributed.on_main(save_peft_config, exported, os.path.join(out, "peft_config.json"))
    result = retrain_module.retrain_lora(model, exported, task.train, task.collate, retrain_config,
                                         progress=run_config.progress and distributed.is_main())
    return distributed.on_main(_finish_retrain, out, result, task, retrain_config)


def _check_retrain_output(out: str, overwrite: bool, create: bool = True) -> None:
    if os.path.exists(os.path.join(out, "adapter")) and not overwrite:
        raise FileExistsError(f"--output-dir {out!r} already holds adapter/; pass --overwrite or choose another "
                              "directory")
    if create:
        os.makedirs(out, exist_ok=True)


def _finish_retrain(out: str, result, task, retrain_config: RetrainConfig) -> dict:
    """Save adapter/, evaluate, complete metrics.json and save merged/; rank 0's job under torchrun. The adapter is
    saved first, so that a failing evaluation loses no training; merging consumes the model, so it comes last."""
    stale = os.path.join(out, PREDICTIONS)
    if os.path.exists(stale):  # an earlier adapter's predictions must not sit beside this one, whatever fails next
        os.remove(stale)
    retrain_module.save_adapter(result.model, os.path.join(out, "adapter"))
    start = time.perf_counter()
    evaluation = (task.evaluate(result.model, task.evaluation, batch_size=retrain_config.eval_batch_size)
                  if task.evaluation is not None else {})
    eval_time = time.perf_counter() - start
    logger.info("evaluation: %s", evaluation)
    path = os.path.join(out, "metrics.json")
    metrics = _update_json(path, {
        "eval": evaluation,
        "retrain": {"steps": result.steps, "wall_time_s": round(result.wall_time_s, 2),
                    "eval_wall_time_s": round(eval_time, 2), "trainable_parameters": result.trainable_parameters,
                    "train_examples": len(task.train), "final_loss": result.losses[-1][1] if result.losses else None,
                    **_label_scaling(task)}}, drop=("test",))  # a test score of an earlier adapter is not this one's
    test = _score_test_split(task, result.model, retrain_config.eval_batch_size, out)  # a failure keeps eval's
    if test is not None:
        metrics = _update_json(path, {"test": test})
    if retrain_config.merge:
        retrain_module.save_merged(result.model, os.path.join(out, "merged"), tokenizer=task.tokenizer)
    return metrics


def _score_test_split(task, model, batch_size: int, out: str) -> dict | None:
    """Metrics of the retrained model on the test split (``--test-file``, a hub dataset's test split), once, after
    everything was chosen on the other splits; None when there is none or it has no labels (a hub's hidden ones).
    An unlabeled test split gets its predictions written instead, one JSON line per row in the split's order
    (``predictions_test.jsonl``: what a leaderboard submission is made from)."""
    path = os.path.join(out, PREDICTIONS)  # an earlier adapter's was removed before this one was saved
    if task.test is None or len(task.test) == 0:
        return None
    if "labels" not in task.test.column_names:
        predictions = task.predict(model, task.test, batch_size=batch_size)
        write_bytes_atomic(path, "".join(json.dumps({"index": index, "prediction": _json_value(prediction)}) + "\n"
                                         for index, prediction in enumerate(predictions)).encode("utf-8"))
        logger.info("test split %s has no labels: not scored; %d predictions written to %s",
                    task.sources.get("test", "test"), len(predictions), path)
        return None
    test = task.evaluate(model, task.test, batch_size=batch_size)
    logger.info("test: %s", test)
    return test


def _json_value(prediction):
    """A prediction as valid JSON: a non-finite number (a diverged regression head) as null."""
    return None if isinstance(prediction, float) and not math.isfinite(prediction) else prediction


def run(run_config: RunConfig, data_config, config: AutoLoraConfig, search_config: SearchConfig,
        retrain_config: RetrainConfig) -> dict:
    """Search, retrain, evaluate and write the report. Returns metrics.json's content."""
    out = _output_dir(run_config)
    _device(run_config)
    distributed.on_main(check_output_dir, out, run_config.overwrite or run_config.resume)
    # fail before the search, not after
    distributed.on_main(_check_retrain_output, out, run_config.overwrite, create=False)
    task = load_task(run_config, data_config)
    start = time.perf_counter()
    ranks = search(run_config, data_config, config, search_config, task=task)
    retrain(run_config, data_config, config, retrain_config, ranks=ranks, task=task)
    metrics = distributed.on_main(_update_json, os.path.join(out, "metrics.json"),
                                  {"total_wall_time_s": round(time.perf_counter() - start, 2),
                                   "world_size": world_size()})
    distributed.on_main(report, out)
    return metrics


def report(output_dir: str) -> str:
    """Write report.html (rank heatmap, selection-weight trajectories, metrics) for a run directory."""
    return report_module.write_report(output_dir)

