"""The `Task` protocol shared by every task kind, and tokenizer/model loading from the hub or a local folder.

A task owns the tokenized splits, the collate function that pads a batch to its longest sequence, the model head
that fits the data, and the evaluation that turns a model into metrics.  Kinds subclass `Task` and fill in
`_tokenize`, `collate` and `_predict`.
"""
from __future__ import annotations

import logging
import os
import uuid

import datasets
import torch

from autolora.data import DataConfig, DataError
from autolora.metrics import compute_metrics, default_metric

LOWER_IS_BETTER = ("loss", "mse")

logger = logging.getLogger(__name__)


def _looks_like_path(name_or_path: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else is meant as a local folder."""
    return name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path


def _from_pretrained(loader, name_or_path: str, what: str, **kwargs):
    """`loader.from_pretrained` with clear errors: a missing folder is named, not looked up on the hub."""
    if not os.path.isdir(name_or_path) and _looks_like_path(name_or_path):
        raise FileNotFoundError(f"{what}: model folder not found: {name_or_path}")
    if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, "config.json")):
        raise FileNotFoundError(f"{what}: {name_or_path} is not a Hugging Face model folder: no config.json")
    try:
        return loader.from_pretrained(name_or_path, **kwargs)
    except OSError as error:
        raise OSError(f"{what}: cannot load {name_or_path!r}: not a local model folder and not loadable from the "
                      f"hub (offline? pass a local folder): {str(error).splitlines()[0]}") from error


def load_tokenizer(name_or_path: str, **kwargs):
    """AutoTokenizer from a hub name or a local folder, with a pad token (the eos token when it lacks one, as GPT-2).

    Extra kwargs go to `from_pretrained`, e.g. add_prefix_space=True for byte-level BPE on token classification.
    """
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, name_or_path, "load_tokenizer", **kwargs)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"load_tokenizer: {name_or_path} has neither a pad nor an eos token; "
                             "set tokenizer.pad_token before building the task")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class Task:
    """Tokenized splits plus everything kind-specific: collate, model head, evaluation.

    Attributes: kind, config, tokenizer, columns (option -> column name), train/evaluation/test
    (`datasets.Dataset`, tokenized, no padding), num_labels, label_names, primary_metric and
    greater_is_better (False when the primary metric is loss or mse).
    """

    kind: str = ""
    auto_model_class_name: str = ""
    # A checkpoint whose head has other shapes (2 labels where the data has 3) gets a new head; a language model
    # keeps its own (a mismatch there is a wrong tokenizer, not a new task).
    replaces_mismatched_head = True
    _new_head_logged = False

    def __init__(self, config: DataConfig, tokenizer, raw: dict[str, datasets.Dataset],
                 columns: dict[str, str | None], sources: dict[str, str]):
        self.config = config
        self.tokenizer = tokenizer
        self.columns = columns
        self.sources = sources
        self.num_labels = 1
        self.label_names: list[str] | None = None
        self._setup_labels(raw["train"])
        tokenized = {split: self._tokenize(dataset, split) for split, dataset in raw.items()}
        self.train: datasets.Dataset = tokenized["train"]
        self.evaluation: datasets.Dataset | None = tokenized.get("validation")
        self.test: datasets.Dataset | None = tokenized.get("test")
        self.primary_metric = config.metric_for_best or default_metric(self.kind)
        if self.primary_metric not in self.metric_names():
            raise DataError(f"metric_for_best {self.primary_metric!r} is not reported for {self.kind} tasks; "
                            "choose one of " + ", ".join(self.metric_names()))
        self.greater_is_better = self.primary_metric not in LOWER_IS_BETTER

    # --- to be filled in by each kind -------------------------------------------------------------------
    def _setup_labels(self, train: datasets.Dataset) -> None:
        """Set num_labels / label_names from the training split (default: nothing to do)."""

    def _tokenize(self, dataset: datasets.Dataset, split: str) -> datasets.Dataset:
        raise NotImplementedError

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Pad a list of tokenized rows to the longest one; returns model inputs and "labels"."""
        raise NotImplementedError

    def _predict(self, model, dataset: datasets.Dataset, batch_size: int) -> dict[str, float]:
        raise NotImplementedError

    def metric_names(self) -> tuple[str, ...]:
        """Keys returned by `evaluate` for this kind."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------------------
    @property
    def auto_model_class(self):
        """The transformers Auto* class for this kind's head."""
        import transformers

        return getattr(transformers, self.auto_model_class_name)

    def model_kwargs(self) -> dict:
        """Config overrides for the head (num_labels, id2label, ...): use with from_pretrained or a Config."""
        return {"pad_token_id": self.tokenizer.pad_token_id}

    def load_model(self, model_name_or_path: str, **from_pretrained_kwargs):
        """Pretrained model with the head this task needs, pad token ids set (GPT-2-like models lack one).

        A head the checkpoint lacks (a bare encoder) is initialised afresh and trained with the LoRA weights; that is
        logged once per task, in one line.
        """
        kwargs = {"ignore_mismatched_sizes": self.replaces_mismatched_head, **self.model_kwargs(),
                  **from_pretrained_kwargs, "output_loading_info": True}
        model, info = _from_pretrained(self.auto_model_class, model_name_or_path, "load_model", **kwargs)
        new = sorted({(key if isinstance(key, str) else key[0]).rsplit(".", 1)[0]
                      for key in [*info["missing_keys"], *info["mismatched_keys"]]})
        if new and not self._new_head_logged:
            logger.info("new task head %s: initialised afresh (%s has none of this shape) and trained with the LoRA "
                        "weights", ", ".join(new), model_name_or_path)
            self._new_head_logged = True
        model.config.pad_token_id = self.tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def _source(self, split: str) -> str:
        return self.sources.get(split, split)

    def _require(self, dataset: datasets.Dataset, split: str, *options: str) -> None:
        """Each named column option must exist in the split and hold no missing (None) value."""
        for option in options:
            name = self.columns[option]
            if name is None:
                continue
            if name not in dataset.column_names:
                raise DataError(f"column not found: {self._source(split)} has no column {name!r} ({option}); "
                                "columns: " + ", ".join(dataset.column_names))
            missing = next((row for row, value in enumerate(dataset[name]) if value is None), None)
            if missing is not None:
                raise DataError(f"missing value: {self._source(split)} example {missing} has no {name!r} ({option})")

    def _map(self, dataset: datasets.Dataset, function, split: str) -> datasets.Dataset:
        """Tokenize batches in memory (no cache files), dropping the raw columns; function(batch, indices).

        A fresh fingerprint skips datasets' hashing of the closure (tokenizer included), which costs seconds.
        """
        return dataset.map(function, batched=True, with_indices=True, remove_columns=dataset.column_names,
                           keep_in_memory=True, new_fingerprint=uuid.uuid4().hex, desc=f"Tokenizing {split}")

    def batches(self, dataset: datasets.Dataset, batch_size: int):
        """Collated batches of `dataset` in order (for evaluation)."""
        for start in range(0, len(dataset), batch_size):
            rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
            yield self.collate(list(rows))

    def evaluate(self, model, dataset: datasets.Dataset | None = None, batch_size: int = 64) -> dict[str, float]:
        """Metrics of `model` on `dataset` (default: the evaluation split), in eval mode without gradients.

        The model's train/eval mode is restored afterwards. Keys: `metric_names()`.
        """
        dataset = self.evaluation if dataset is None else dataset
        if dataset is None or len(dataset) == 0:
            raise DataError(f"evaluate: no evaluation data for this {self.kind} task; set validation_file")
        if "labels" not in dataset.column_names:
            raise DataError(f"evaluate: the dataset has no labels (columns: {', '.join(dataset.column_names)})")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self._predict(model, dataset, batch_size)
        finally:
            model.train(was_training)

    @staticmethod
    def _device(model) -> torch.device:
        return next(model.parameters()).device

    def _to(self, batch: dict, model) -> dict:
        device = self._device(model)
        return {key: value.to(device) for key, value in batch.items()}

    def _metrics(self, predictions, references, loss_sum: float, count: int) -> dict[str, float]:
        metrics = compute_metrics(self.kind, predictions, references, num_labels=self.num_labels)
        return {"loss": loss_sum / max(count, 1), **metrics}
