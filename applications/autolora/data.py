"""Data options and raw split loading for AutoLoRA tasks.

`DataConfig` names where the data lives and which columns to use; `load_raw_splits` turns it into untokenized
`datasets.Dataset` splits.  Local files never touch the network: they go straight to the `datasets` packaged
builders (json, csv, parquet).  Every problem with the data raises `DataError` with a one-line message that names
the file, and the line or column at fault.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import datasets

from .config import FieldError

TASK_KIND_NAMES = ("classification", "regression", "token_classification", "generation")
METRIC_NAMES = ("loss", "accuracy", "f1", "matthews_correlation", "pearson", "spearmanr", "mse",
                "precision", "recall", "bleu", "rougeL")
SPLIT_FILES = {"train": "train_file", "validation": "validation_file", "test": "test_file"}
# file suffix -> (datasets builder, extra builder options); tsv is csv with a tab delimiter
FILE_FORMATS = {
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".parquet": ("parquet", {}),
}


class DataError(ValueError):
    """The data cannot be used as given: a file, a column, a label or a split is wrong."""


def _help(text, default=None):
    return field(default=default, metadata={"help": text})


@dataclass
class DataConfig:
    """Where the data is, which columns hold what, and how to tokenize it.

    Columns left as None are detected from their usual names (see `autolora.task_detection`).
    """

    dataset_name: str | None = _help("Hub dataset name (needs the network); use train_file etc. for local data.")
    dataset_config_name: str | None = _help("Hub dataset configuration, e.g. 'sst2' for dataset_name 'glue'.")
    train_file: str | None = _help("Training data: .jsonl, .json, .csv, .tsv or .parquet.")
    validation_file: str | None = _help("Evaluation data (held out from search and retraining), same formats.")
    test_file: str | None = _help("Optional test data, same formats; labels may be absent.")
    task_kind: str = _help("One of auto, " + ", ".join(TASK_KIND_NAMES) + "; auto infers it from the columns.",
                           "auto")
    text_column: str | None = _help("Classification/regression: column with the (first) text.")
    text_pair_column: str | None = _help("Classification/regression: column with the second text of a pair.")
    label_column: str | None = _help("Classification/regression: label column (floats mean regression).")
    tokens_column: str | None = _help("Token classification: column with the list of words.")
    tags_column: str | None = _help("Token classification: column with the list of tags, one per word.")
    source_column: str | None = _help("Generation: column with the prompt text.")
    target_column: str | None = _help("Generation: column with the text to generate.")
    max_length: int = _help("Truncate tokenized examples to this many tokens (batches pad to their longest).", 128)
    max_train_samples: int | None = _help("Keep only the first N training examples (quick runs).")
    max_eval_samples: int | None = _help("Keep only the first N evaluation examples.")
    max_test_samples: int | None = _help("Keep only the first N test examples.")
    label_all_tokens: bool = _help("Token classification: label every sub-token of a word in training, not only "
                                   "the first (evaluation always scores the first sub-token).", False)
    metric_for_best: str | None = _help("Metric that ranks results, e.g. matthews_correlation for CoLA; default "
                                        "per kind: accuracy, pearson, f1 (seqeval) or bleu.")
    generation_separator: str = _help("Generation: text placed between source and target.", " => ")
    max_new_tokens: int = _help("Generation: tokens decoded per example at evaluation.", 64)

    def __post_init__(self):
        def refuse(name: str, message: str):
            raise FieldError("DataConfig", name, message)

        if self.task_kind not in ("auto",) + TASK_KIND_NAMES:
            refuse("task_kind", f"must be one of auto, {', '.join(TASK_KIND_NAMES)}; got {self.task_kind!r}")
        if self.dataset_name and any(getattr(self, name) for name in SPLIT_FILES.values()):
            refuse("dataset_name", "excludes local files (train_file, validation_file, test_file); give one or the "
                                   "other")
        if not self.dataset_name and not self.train_file:
            refuse("train_file", "is required (or a hub dataset_name): no data given")
        for name in SPLIT_FILES.values():
            path = getattr(self, name)
            if path is not None and _suffix(path) not in FILE_FORMATS:
                refuse(name, f"{path!r} has an unsupported extension; use one of " + ", ".join(FILE_FORMATS))
        for name in ("max_length", "max_new_tokens", "max_train_samples", "max_eval_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                refuse(name, f"must be a positive integer, got {value!r}")
        if self.metric_for_best is not None and self.metric_for_best not in METRIC_NAMES:
            refuse("metric_for_best", f"must be one of {', '.join(METRIC_NAMES)}; got {self.metric_for_best!r}")

    def to_dict(self) -> dict:
        """Plain dict of the fields, for JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DataConfig":
        """Inverse of `to_dict`; unknown keys are an error naming the valid ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"DataConfig.from_dict: unknown field(s) {', '.join(unknown)}; valid fields: "
                             + ", ".join(sorted(known)))
        return cls(**values)


def _suffix(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def load_raw_splits(config: DataConfig) -> dict[str, datasets.Dataset]:
    """Load the untokenized splits ("train", and "validation"/"test" when present), truncated to max_*_samples.

    Local files are checked first (existence, JSON syntax line by line, non-empty), so errors name the file.
    """
    splits = _load_local(config) if config.train_file else _load_hub(config)
    limits = {"train": config.max_train_samples, "validation": config.max_eval_samples,
              "test": config.max_test_samples}
    for split, dataset in splits.items():
        if len(dataset) == 0:
            raise DataError(f"{split} split is empty: {_describe(config, split)} has no examples")
        if limits[split] is not None and limits[split] < len(dataset):
            splits[split] = dataset.select(range(limits[split]))
    return splits


def _describe(config: DataConfig, split: str) -> str:
    path = getattr(config, SPLIT_FILES[split])
    return f"file {path}" if path else f"hub dataset {config.dataset_name} split {split}"


def _load_local(config: DataConfig) -> dict[str, datasets.Dataset]:
    splits = {}
    for split, name in SPLIT_FILES.items():
        path = getattr(config, name)
        if path is not None:
            splits[split] = read_file(path, split)
    return splits


def read_file(path: str, split: str = "train") -> datasets.Dataset:
    """Read one local data file (of `split`, for messages) with the `datasets` builder its extension calls for."""
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path}")
    suffix = _suffix(path)
    if suffix not in FILE_FORMATS:
        raise DataError(f"unsupported data file {path}: use one of " + ", ".join(FILE_FORMATS))
    builder, options = FILE_FORMATS[suffix]
    if builder in ("json", "csv"):
        text = _read_utf8(path)
        if builder == "json":
            _check_json(path, text)
    try:
        loaded = datasets.load_dataset(builder, data_files={"data": path}, **options)
    except Exception as error:  # datasets/pyarrow raise many types; re-raise with the file named
        if "corresponds to no data" in str(error):  # datasets' way of saying the file has a header but no rows
            raise DataError(f"{split} split is empty: file {path} has no examples") from error
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"could not read {builder} file {path}: {message}") from error
    return loaded["data"]


def _read_utf8(path: str) -> str:
    """The text of a data file; bytes that are not UTF-8 are named by line and column."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise DataError(f"{path} is not UTF-8: line {line}, column {column} holds byte "
                        f"0x{data[error.start]:02x}; save the file as UTF-8") from None


def _check_json(path: str, text: str) -> None:
    """Parse JSON / JSON Lines ourselves so a syntax error names its line (datasets' errors do not)."""
    if not text.strip():
        raise DataError(f"data file is empty: {path}")
    if _suffix(path) == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None  # not one JSON document: check it as JSON Lines below
        if isinstance(document, list):
            if not all(isinstance(row, dict) for row in document):
                raise DataError(f"malformed JSON in {path}: expected a list of objects, one per example")
            return
        if isinstance(document, dict):
            return  # one object per file (or a column dict): let the builder decide
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"malformed JSON Lines in {path} line {number}: {error.msg} "
                            f"(column {error.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"malformed JSON Lines in {path} line {number}: expected an object {{...}}, "
                            f"got {type(row).__name__}")


def _load_hub(config: DataConfig) -> dict[str, datasets.Dataset]:
    """Online path: the hub dataset's train split, its first validation* split and its test split."""
    try:
        loaded = datasets.load_dataset(config.dataset_name, config.dataset_config_name)
    except Exception as error:
        raise DataError(f"could not load hub dataset {config.dataset_name!r}: {error} (offline? pass "
                        "train_file/validation_file instead)") from error
    if "train" not in loaded:
        raise DataError(f"hub dataset {config.dataset_name!r} has no train split; splits: "
                        + ", ".join(loaded))
    splits = {"train": loaded["train"]}
    validation = sorted(name for name in loaded if name.startswith("validation"))
    if validation:
        splits["validation"] = loaded[validation[0]]
    if "test" in loaded:
        splits["test"] = loaded["test"]
    return splits
