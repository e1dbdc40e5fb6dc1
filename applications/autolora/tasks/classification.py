"""Sequence classification and regression on one text or a text pair (GLUE-style).

Classification labels may be integers, booleans or strings; the label list is the sorted set of training labels
(or a hub ClassLabel's names) and labels become indices into it.  Regression labels are numbers (float, STS-B).
"""
from __future__ import annotations

import datasets
import numpy as np
import torch

from autolora.data import DataError
from autolora.metrics import classification_metrics, regression_metrics
from autolora.tasks.base import Task


class SequenceClassificationTask(Task):
    """Label per text (or pair): AutoModelForSequenceClassification, logits argmax vs labels."""

    kind = "classification"
    family = "sequence"
    column_options = ("text_column", "text_pair_column", "label_column")
    auto_model_class_name = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    metric_names = ("loss", "accuracy", "f1", "matthews_correlation")
    default_metric = "accuracy"

    @classmethod
    def score(cls, predictions, references, num_labels=None):
        return classification_metrics(predictions, references, num_labels)

    def _label_feature(self, train: datasets.Dataset):
        return train.features[self.columns["label_column"]]

    def _setup_labels(self, train):
        self._require(train, "train", "label_column")
        feature = self._label_feature(train)
        if isinstance(feature, datasets.ClassLabel):
            self.label_names = list(feature.names)
            self._label_index = {index: index for index in range(len(feature.names))}
        else:
            values = sorted(set(self._check_label_types(train, "train")))
            self.label_names = [str(value) for value in values]
            self._label_index = {value: index for index, value in enumerate(values)}
        self.num_labels = len(self.label_names)
        if self.num_labels < 2:
            raise DataError(f"labels: {self._source('train')} has a single label value ({self.label_names[0]}); "
                            "classification needs at least two")

    def _check_label_types(self, dataset, split) -> list:
        name = self.columns["label_column"]
        values = dataset[name]
        for row, value in enumerate(values):
            ok = isinstance(value, (bool, int, str)) or (isinstance(value, float) and value.is_integer())
            if not ok:
                raise DataError(f"labels of the wrong type: {self._source(split)} example {row} has {name!r} = "
                                f"{value!r}; classification needs integer, boolean or string labels "
                                "(float labels mean regression: pass task_kind regression)")
        strings = [row for row, value in enumerate(values) if isinstance(value, str)]
        if strings and len(strings) < len(values):
            number = next(row for row, value in enumerate(values) if not isinstance(value, str))
            raise DataError(f"labels of mixed types: {self._source(split)} example {number} has {name!r} = "
                            f"{values[number]!r} but example {strings[0]} has {values[strings[0]]!r}; use either "
                            "numbers or names for every label")
        return [int(value) if isinstance(value, float) else value for value in values]

    def _labels(self, dataset, split) -> list:
        values = self._check_label_types(dataset, split)
        unknown = next((value for value in values if value not in self._label_index), None)
        if unknown is not None:
            raise DataError(f"unknown label {unknown!r} in {self._source(split)}: the training labels are "
                            + ", ".join(self.label_names))
        return [self._label_index[value] for value in values]

    def _tokenize(self, dataset, split):
        self._require(dataset, split, "text_column", "text_pair_column")
        has_labels = self.columns["label_column"] in dataset.column_names
        if split != "test" or has_labels:
            self._require(dataset, split, "label_column")
            labels = self._labels(dataset, split)
        text, pair = self.columns["text_column"], self.columns["text_pair_column"]

        def tokenize(batch, indices):
            encoded = self.tokenizer(batch[text], batch[pair] if pair else None, truncation=True,
                                     max_length=self.config.max_length)
            if has_labels:
                encoded["labels"] = [labels[i] for i in indices]
            return encoded

        return self._map(dataset, tokenize, split)

    def model_kwargs(self):
        return {**super().model_kwargs(), "num_labels": self.num_labels,
                "id2label": dict(enumerate(self.label_names)),
                "label2id": {name: index for index, name in enumerate(self.label_names)}}

    def collate(self, features):
        """Pads input_ids/attention_mask/token_type_ids to the longest row; labels as a tensor."""
        labels = [row["labels"] for row in features] if "labels" in features[0] else None
        inputs = [{key: value for key, value in row.items() if key != "labels"} for row in features]
        batch = dict(self.tokenizer.pad(inputs, padding="longest", return_tensors="pt"))
        if labels is not None:
            batch["labels"] = torch.tensor(labels, dtype=self._label_dtype)
        return batch

    _label_dtype = torch.long

    def _outputs(self, logits: torch.Tensor) -> list:
        return logits.argmax(dim=-1).tolist()

    def _predict(self, model, dataset, batch_size):
        predictions, references, loss_sum = [], [], 0.0
        for batch in self.batches(dataset, batch_size):
            batch = self._to(batch, model)
            output = model(**batch)
            loss_sum += float(output.loss) * self._loss_scale() * len(batch["labels"])
            predictions += self._outputs(output.logits)
            references += self._references(batch["labels"])
        return self._metrics(predictions, references, loss_sum, len(references))

    def _references(self, labels: torch.Tensor) -> list:
        return labels.tolist()

    def _loss_scale(self) -> float:
        return 1.0

    def _predictions(self, model, dataset, batch_size):
        outputs = []
        for batch in self.batches(dataset, batch_size):
            outputs += self._outputs(model(**self._inputs(batch, model)).logits)
        return self._named(outputs)

    def _named(self, outputs: list) -> list:
        """Class indices as the label names of the data."""
        return [self.label_names[index] for index in outputs]


class RegressionTask(SequenceClassificationTask):
    """Number per text (or pair): one-output head with problem_type regression (MSE loss).

    The model is trained on labels standardized with the training split's mean and standard deviation, and its
    outputs are mapped back before scoring, so metrics and MSE are in the data's units. With raw labels (STS-B: 0-5,
    mean 2.7) a fresh head and LoRA learn only the mean in short runs: Pearson 0.12 against 0.76 standardized, with
    plain PEFT LoRA on MiniLM, measured on held-out training rows. ``label_mean``/``label_std`` convert the saved
    model's outputs: ``prediction = output * label_std + label_mean``.
    """

    kind = "regression"
    metric_names = ("loss", "pearson", "spearmanr", "mse")
    default_metric = "pearson"
    _label_dtype = torch.float32

    @classmethod
    def score(cls, predictions, references, num_labels=None):
        return regression_metrics(predictions, references)

    def _setup_labels(self, train):
        self._require(train, "train", "label_column")
        self.num_labels, self.label_names = 1, None
        values = np.asarray(self._labels(train, "train"), dtype=np.float64)
        self.label_mean = float(values.mean())
        self.label_std = float(values.std()) or 1.0

    def _labels(self, dataset, split):
        name = self.columns["label_column"]
        values = dataset[name]
        for row, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise DataError(f"labels of the wrong type: {self._source(split)} example {row} has {name!r} = "
                                f"{value!r}; regression needs numeric labels")
        return [float(value) for value in values]

    def model_kwargs(self):
        return {"pad_token_id": self.tokenizer.pad_token_id, "num_labels": 1, "problem_type": "regression"}

    def collate(self, features):
        batch = super().collate(features)
        if "labels" in batch:
            batch["labels"] = (batch["labels"] - self.label_mean) / self.label_std
        return batch

    def _outputs(self, logits):
        return (logits.squeeze(-1).double() * self.label_std + self.label_mean).tolist()

    def _references(self, labels):
        return (labels.double() * self.label_std + self.label_mean).tolist()

    def _loss_scale(self):  # the MSE of standardized labels, back in the data's units
        return self.label_std ** 2

    def _named(self, outputs):  # numbers, already in the data's units
        return outputs
