"""Raw split loading for AutoLoRA tasks.

`load_raw_splits` turns a `DataConfig` (`autolora.config`: where the data lives, which columns to use) into
untokenized `datasets.Dataset` splits.  Local files never touch the network: they go straight to the `datasets` packaged
builders (json, csv, parquet).  Every problem with the data raises `DataError` with a one-line message that names
the file, and the line or column at fault.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # datasets is imported where data is loaded: `autolora.config` checks suffixes without it
    import datasets

    from .config import DataConfig

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


def suffix(path: str) -> str:
    """The lower-case extension of a data file, e.g. ".jsonl"."""
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
    extension = suffix(path)
    if extension not in FILE_FORMATS:
        raise DataError(f"unsupported data file {path}: use one of " + ", ".join(FILE_FORMATS))
    builder, options = FILE_FORMATS[extension]
    import datasets

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
    if suffix(path) == ".json":
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
    import datasets

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
        splits["test"] = _without_hidden_labels(loaded["test"], config)
    return splits


def _without_hidden_labels(test: datasets.Dataset, config: DataConfig) -> datasets.Dataset:
    """A hub test split whose labels are all -1 (GLUE's hidden test labels), as an unlabeled split."""
    from .tasks.detection import LABEL_NAMES

    candidates = [config.label_column] if config.label_column else LABEL_NAMES
    hidden = [name for name in candidates if name in test.column_names and len(test)
              and all(isinstance(value, (int, float)) and value == -1 for value in test[name])]
    return test.remove_columns(hidden) if hidden else test


def __getattr__(name: str):
    """`autolora.data.DataConfig` is `autolora.config.DataConfig` (deprecated here: it lives with the other configs)."""
    if name == "DataConfig":
        warnings.warn("autolora.data.DataConfig is deprecated: import DataConfig from autolora.config (or autolora)",
                      DeprecationWarning, stacklevel=2)
        from .config import DataConfig

        return DataConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
