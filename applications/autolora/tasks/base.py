"""The `Task` protocol shared by every task kind, with the facts each kind declares about itself.

A task owns the tokenized splits, the collate function that pads a batch to its longest sequence, the model head
that fits the data, and the evaluation that turns a model into metrics.  Kinds subclass `Task`, declare their
facts as class attributes (kind, PEFT task type, metrics, columns) and fill in `_tokenize`, `collate`, `_predict`
(metrics), `_predictions` (one prediction per row, labels or not) and `score`; `autolora.tasks.TASK_KINDS` lists them by kind, and nothing else keeps a table of them.
"""
from __future__ import annotations

import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

import torch

from autolora.data import DataError
from autolora.tasks.pretrained import from_pretrained

if TYPE_CHECKING:
    import datasets

    from autolora.config import DataConfig

LOWER_IS_BETTER = ("loss", "mse")

logger = logging.getLogger(__name__)


# Model types with learned absolute position embeddings; those of RoBERTa's family start their position ids after
# the padding index, so max_position_embeddings counts pad_token_id + 1 positions they never use. Others (rotary,
# relative, types not listed) are not checked.
LEARNED_POSITIONS = ("bert", "distilbert", "electra", "albert", "gpt2", "gpt_neo", "opt")
POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "camembert", "data2vec-text")


def position_limit(config) -> int | None:
    """How many tokens a model's learned position embeddings cover; None where it has none this knows of."""
    model_type = getattr(config, "model_type", "")
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if (model_type not in LEARNED_POSITIONS + POSITIONS_AFTER_PADDING or limit is None
            or getattr(config, "position_embedding_type", "absolute") != "absolute"):
        return None
    unused = (getattr(config, "pad_token_id", None) or 0) + 1 if model_type in POSITIONS_AFTER_PADDING else 0
    return int(limit) - unused


@contextlib.contextmanager
def _evaluating(model):
    """Eval mode without gradients; the model's train/eval mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _longest(dataset: datasets.Dataset) -> int:
    """The most tokens in a row of ``dataset``, read off its Arrow column (no Python lists of every row)."""
    import pyarrow.compute as pc

    if len(dataset) == 0:
        return 0
    table = dataset.flatten_indices().data if dataset._indices is not None else dataset.data
    return int(pc.max(pc.list_value_length(table.column("input_ids"))).as_py() or 0)


class Task:
    """Tokenized splits plus everything kind-specific: collate, model head, evaluation.

    Attributes: kind, config, tokenizer, columns (option -> column name), train/evaluation/test
    (`datasets.Dataset`, tokenized, no padding), num_labels, label_names, primary_metric and
    greater_is_better (False when the primary metric is loss or mse).
    """

    kind: str = ""                      # the name DataConfig.task_kind and TASK_KINDS use
    family: str = ""                    # kinds that read the same columns (classification and regression: "sequence")
    column_options: tuple[str, ...] = ()   # the DataConfig options naming this family's columns
    auto_model_class_name: str = ""     # the transformers Auto* class of the head
    peft_task_type: str = ""            # PEFT's TaskType for this head (peft_config.json's task_type)
    metric_names: tuple[str, ...] = ()  # the keys `evaluate` returns
    default_metric: str = ""            # ranks results unless DataConfig.metric_for_best names another
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
        self.primary_metric = config.metric_for_best or self.default_metric
        if self.primary_metric not in self.metric_names:
            raise DataError(f"metric_for_best {self.primary_metric!r} is not reported for {self.kind} tasks; "
                            "choose one of " + ", ".join(self.metric_names))
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

    @classmethod
    def score(cls, predictions, references, num_labels: int | None = None) -> dict[str, float]:
        """The metrics of predictions against references (without the loss; see `autolora.metrics`)."""
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
        model, info = from_pretrained(self.auto_model_class, model_name_or_path, "load_model", **kwargs)
        new = sorted({(key if isinstance(key, str) else key[0]).rsplit(".", 1)[0]
                      for key in [*info["missing_keys"], *info["mismatched_keys"]]})
        if new and not self._new_head_logged:
            logger.info("new task head %s: initialised afresh (%s has none of this shape) and trained with the LoRA "
                        "weights", ", ".join(new), model_name_or_path)
            self._new_head_logged = True
        self._check_positions(model, model_name_or_path)  # on the config as built (RoBERTa's offset is its pad id)
        model.config.pad_token_id = self.tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def _check_positions(self, model, name: str) -> None:
        """Refuse examples longer than the model's learned positions before any step: they would fail deep in the
        forward pass (an index error in the position embedding), minutes into a run."""
        limit = position_limit(model.config)
        if limit is None:
            return
        splits = [d for d in (self.train, self.evaluation, self.test) if d is not None and "input_ids" in d.column_names]
        longest = max((_longest(d) for d in splits), default=0)
        if longest > limit:
            raise DataError(f"examples of up to {longest} tokens (--max-length {self.config.max_length}) do not fit "
                            f"{name}, which has {limit} positions; pass --max-length {limit} or less")

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

        The model's train/eval mode is restored afterwards. Keys: `metric_names`.
        """
        dataset = self.evaluation if dataset is None else dataset
        if dataset is None or len(dataset) == 0:
            raise DataError(f"evaluate: no evaluation data for this {self.kind} task; set validation_file")
        if "labels" not in dataset.column_names:
            raise DataError(f"evaluate: the dataset has no labels (columns: {', '.join(dataset.column_names)})")
        with _evaluating(model):
            return self._predict(model, dataset, batch_size)

    def predict(self, model, dataset: datasets.Dataset, batch_size: int = 64) -> list:
        """One prediction per row of `dataset`, whether it has labels or not (a hub's hidden test labels): a class
        name, a number, a tag per word or a generated text, by kind. Eval mode without gradients, as `evaluate`."""
        with _evaluating(model):
            return self._predictions(model, dataset, batch_size)

    def _predictions(self, model, dataset: datasets.Dataset, batch_size: int) -> list:
        raise NotImplementedError

    def _inputs(self, batch: dict, model) -> dict:
        """A collated batch without its labels, on the model's device: what a prediction feeds the model."""
        return self._to({key: value for key, value in batch.items() if key != "labels"}, model)

    @staticmethod
    def _device(model) -> torch.device:
        return next(model.parameters()).device

    def _to(self, batch: dict, model) -> dict:
        device = self._device(model)
        return {key: value.to(device) for key, value in batch.items()}

    def _metrics(self, predictions, references, loss_sum: float, count: int) -> dict[str, float]:
        metrics = self.score(predictions, references, num_labels=self.num_labels)
        return {"loss": loss_sum / max(count, 1), **metrics}
