"""Token classification on pre-split words with one tag per word (CoNLL-style NER).

Tags may be strings (the label list is their sorted set over the training split) or integers (a hub ClassLabel's
names, or the sorted set of integers).  Each word's tag goes on its first sub-token and -100 elsewhere (special
tokens too); with label_all_tokens the other sub-tokens of a word get the same tag in the training split.
Evaluation scores one tag per word with seqeval.
"""
from __future__ import annotations

import logging

from autolora.data import DataError
from autolora.metrics import token_classification_metrics
from autolora.tasks.base import Task
from autolora.tasks.detection import is_list_feature

IGNORE_INDEX = -100

logger = logging.getLogger(__name__)


class TokenClassificationTask(Task):
    """Tag per word: AutoModelForTokenClassification; needs a fast tokenizer (for word_ids)."""

    kind = "token_classification"
    family = "token_classification"
    column_options = ("tokens_column", "tags_column")
    auto_model_class_name = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    metric_names = ("loss", "precision", "recall", "f1", "accuracy")
    default_metric = "f1"

    @classmethod
    def score(cls, predictions, references, num_labels=None):
        return token_classification_metrics(predictions, references)

    def _setup_labels(self, train):
        if not getattr(self.tokenizer, "is_fast", False):
            raise DataError("token classification needs a fast tokenizer (word_ids); load it with use_fast=True")
        self._require(train, "train", "tokens_column", "tags_column")
        feature = train.features[self.columns["tags_column"]]
        names = getattr(getattr(feature, "feature", None), "names", None)
        if names is not None:  # hub ClassLabel: integers index its names
            self.label_names = list(names)
            self._label_index = {index: index for index in range(len(names))}
        else:
            values = sorted({tag for tags in self._tag_lists(train, "train") for tag in tags})
            self.label_names = [str(value) for value in values]
            self._label_index = {value: index for index, value in enumerate(values)}
        self.num_labels = len(self.label_names)

    def _tag_lists(self, dataset, split) -> list[list]:
        """The tag lists, checked: lists of str/int of the same length as the word lists."""
        tokens_name, tags_name = self.columns["tokens_column"], self.columns["tags_column"]
        for option, name in (("tokens_column", tokens_name), ("tags_column", tags_name)):
            if not is_list_feature(dataset.features[name]):
                raise DataError(f"labels of the wrong type: {self._source(split)} column {name!r} ({option}) "
                                "must hold a list per example")
        words, tags = dataset[tokens_name], dataset[tags_name]
        for row, (row_words, row_tags) in enumerate(zip(words, tags)):
            if len(row_words) != len(row_tags):
                raise DataError(f"tags do not match words: {self._source(split)} example {row} has "
                                f"{len(row_words)} {tokens_name!r} and {len(row_tags)} {tags_name!r}")
            bad = next((tag for tag in row_tags if isinstance(tag, bool) or not isinstance(tag, (str, int))),
                       None)
            if bad is not None:
                raise DataError(f"labels of the wrong type: {self._source(split)} example {row} has tag {bad!r}; "
                                "tags must be strings or integers")
        return tags

    def _tokenize(self, dataset, split):
        self._require(dataset, split, "tokens_column")
        has_labels = self.columns["tags_column"] in dataset.column_names
        if split != "test" or has_labels:
            self._require(dataset, split, "tags_column")
            tag_lists = self._tag_lists(dataset, split)
            unknown = next((tag for tags in tag_lists for tag in tags if tag not in self._label_index), None)
            if unknown is not None:
                raise DataError(f"unknown tag {unknown!r} in {self._source(split)}: the training tags are "
                                + ", ".join(self.label_names))
        label_all = self.config.label_all_tokens and split == "train"
        words = self.columns["tokens_column"]

        def tokenize(batch, indices):
            encoded = self.tokenizer(batch[words], is_split_into_words=True, truncation=True,
                                     max_length=self.config.max_length)
            row_words = [encoded.word_ids(i) for i in range(len(indices))]
            # each sub-token's word (-1: a special token) and the row's word count, so that predictions map back to
            # every word without labels
            encoded["word_ids"] = [[-1 if w is None else w for w in ids] for ids in row_words]
            encoded["word_count"] = [len(row) for row in batch[words]]
            if has_labels:
                encoded["labels"] = [self._align(ids, tag_lists[index], label_all)
                                     for ids, index in zip(row_words, indices)]
            return encoded

        return self._map(dataset, tokenize, split)

    def _align(self, word_ids: list[int | None], tags: list, label_all: bool) -> list[int]:
        """Sub-token labels: the word's tag on its first sub-token, -100 on the rest unless label_all."""
        labels, previous = [], None
        for word in word_ids:
            if word is None:
                labels.append(IGNORE_INDEX)
            elif word != previous or label_all:
                labels.append(self._label_index[tags[word]])
            else:
                labels.append(IGNORE_INDEX)
            previous = word
        return labels

    def model_kwargs(self):
        return {**super().model_kwargs(), "num_labels": self.num_labels,
                "id2label": dict(enumerate(self.label_names)),
                "label2id": {name: index for index, name in enumerate(self.label_names)}}

    def collate(self, features):
        """Pads inputs to the longest row and labels with -100."""
        from transformers import DataCollatorForTokenClassification

        inputs = [{key: value for key, value in row.items() if key not in ("word_ids", "word_count")}
                  for row in features]
        return dict(DataCollatorForTokenClassification(self.tokenizer, label_pad_token_id=IGNORE_INDEX)(inputs))

    def _predictions(self, model, dataset, batch_size):
        """One entry per word of each row, in order: the tag predicted at the word's first sub-token, or None for a
        word with no sub-token left (cut by max_length, or one the tokenizer maps to nothing), so that tags line up
        with words by position."""
        predictions, word_ids, counts, missing = [], dataset["word_ids"], dataset["word_count"], 0
        for start, batch in zip(range(0, len(dataset), batch_size), self.batches(dataset, batch_size)):
            best = model(**self._inputs(batch, model)).logits.argmax(-1).tolist()
            for row, tokens in enumerate(best):
                tags = [None] * counts[start + row]
                for position, word in enumerate(word_ids[start + row]):
                    if word >= 0 and tags[word] is None:
                        tags[word] = self.label_names[tokens[position]]
                missing += tags.count(None)
                predictions.append(tags)
        if missing:
            logger.info("%d word(s) had no sub-token left (cut by --max-length %d, or empty to the tokenizer): "
                        "predicted as null", missing, self.config.max_length)
        return predictions

    def _predict(self, model, dataset, batch_size):
        predictions, references, loss_sum, count = [], [], 0.0, 0
        for batch in self.batches(dataset, batch_size):
            batch = self._to(batch, model)
            output = model(**batch)
            loss_sum += float(output.loss) * len(batch["labels"])
            count += len(batch["labels"])
            for logits, labels in zip(output.logits.argmax(-1).tolist(), batch["labels"].tolist()):
                kept = [(p, t) for p, t in zip(logits, labels) if t != IGNORE_INDEX]
                predictions.append([self.label_names[p] for p, _ in kept])
                references.append([self.label_names[t] for _, t in kept])
        return self._metrics(predictions, references, loss_sum, count)
