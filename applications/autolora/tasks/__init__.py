"""Build the `Task` for a `DataConfig`: load the raw splits, detect kind and columns, tokenize.

    tokenizer = load_tokenizer("path/to/model")
    task = build_task(DataConfig(train_file="train.jsonl", validation_file="dev.jsonl"), tokenizer)
    model = task.load_model("path/to/model")
    loss = model(**task.collate([task.train[0], task.train[1]])).loss
    metrics = task.evaluate(model)           # on task.evaluation; keys task.metric_names()

`TASK_KINDS` maps each kind name to its `Task` class.
"""
from __future__ import annotations

from autolora.data import SPLIT_FILES, DataConfig, load_raw_splits
from autolora.task_base import Task, load_tokenizer
from autolora.task_classification import RegressionTask, SequenceClassificationTask
from autolora.task_detection import detect
from autolora.task_generation import GenerationTask
from autolora.task_token_classification import TokenClassificationTask

TASK_KINDS: dict[str, type[Task]] = {
    "classification": SequenceClassificationTask,
    "regression": RegressionTask,
    "token_classification": TokenClassificationTask,
    "generation": GenerationTask,
}

__all__ = ["TASK_KINDS", "Task", "build_task", "load_tokenizer"]


def build_task(config: DataConfig, tokenizer) -> Task:
    """Load, validate and tokenize the data of `config` (no padding) into the Task of its kind."""
    raw = load_raw_splits(config)
    sources = {split: (f"{split} file {getattr(config, option)}" if getattr(config, option)
                       else f"hub dataset {config.dataset_name} split {split}")
               for split, option in SPLIT_FILES.items()}
    kind, columns = detect(config, raw["train"], sources["train"])
    return TASK_KINDS[kind](config, tokenizer, raw, columns, sources)
