"""The task kinds AutoLoRA trains on, and `build_task`: load the raw splits, detect kind and columns, tokenize.

    tokenizer = load_tokenizer("path/to/model")
    task = build_task(DataConfig(train_file="train.jsonl", validation_file="dev.jsonl"), tokenizer)
    model = task.load_model("path/to/model")
    loss = model(**task.collate([task.train[0], task.train[1]])).loss
    metrics = task.evaluate(model)           # on task.evaluation; keys task.metric_names
    predictions = task.predict(model, task.test)   # one per row, labels or not

Each kind is a `Task` class that carries its own facts (`kind`, `peft_task_type`, `metric_names`,
`default_metric`, its columns and its `score`); `TASK_KINDS` maps each kind name to its class, and everything
that needs a fact of a kind (the data options, column detection, the PEFT export, the metrics) asks the class.
"""
from __future__ import annotations

from autolora.data import SPLIT_FILES, load_raw_splits
from autolora.tasks.base import Task
from autolora.tasks.classification import RegressionTask, SequenceClassificationTask
from autolora.tasks.detection import detect
from autolora.tasks.generation import GenerationTask
from autolora.tasks.pretrained import load_tokenizer
from autolora.tasks.token_classification import TokenClassificationTask

TASK_KINDS: dict[str, type[Task]] = {task.kind: task for task in (
    SequenceClassificationTask, RegressionTask, TokenClassificationTask, GenerationTask)}

__all__ = ["TASK_KINDS", "Task", "SequenceClassificationTask", "RegressionTask", "TokenClassificationTask",
           "GenerationTask", "build_task", "load_tokenizer", "task_class", "metric_names", "default_metric",
           "compute_metrics"]


def task_class(kind: str, caller: str = "task_class") -> type[Task]:
    """The `Task` class of ``kind``; an unknown kind names the valid ones."""
    if kind not in TASK_KINDS:
        raise ValueError(f"{caller}: unknown kind {kind!r}; choose one of " + ", ".join(TASK_KINDS))
    return TASK_KINDS[kind]


def metric_names() -> tuple[str, ...]:
    """Every metric some kind reports (what DataConfig.metric_for_best may name), in first-reported order."""
    return tuple(dict.fromkeys(name for task in TASK_KINDS.values() for name in task.metric_names))


def default_metric(kind: str) -> str:
    """The metric that ranks results of a kind unless DataConfig.metric_for_best says otherwise."""
    return task_class(kind, "default_metric").default_metric


def compute_metrics(kind: str, predictions, references, num_labels: int | None = None) -> dict[str, float]:
    """The metrics of one task kind, without the loss (see `autolora.metrics` for the keys and their scales)."""
    return task_class(kind, "compute_metrics").score(predictions, references, num_labels=num_labels)


def build_task(config, tokenizer) -> Task:
    """Load, validate and tokenize the data of ``config`` (a `DataConfig`; no padding) into the Task of its kind."""
    raw = load_raw_splits(config)
    sources = {split: (f"{split} file {getattr(config, option)}" if getattr(config, option)
                       else f"hub dataset {config.dataset_name} split {split}")
               for split, option in SPLIT_FILES.items()}
    kind, columns = detect(config, raw["train"], sources["train"])
    return TASK_KINDS[kind](config, tokenizer, raw, columns, sources)
