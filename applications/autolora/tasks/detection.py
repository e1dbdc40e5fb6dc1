"""Infer the task kind and its columns from the training split.

Rules (deterministic, first match wins inside each family; columns given in `DataConfig` always win):

- token_classification: a list column named tokens/words and a list column named ner_tags/tags/labels/label;
- generation: a source column (meaning_representation, source, src, input, prompt, context) and a target column
  (target, tgt, output, completion, response, summary);
- classification/regression: a text pair (sentence1/sentence2, question1/question2, premise/hypothesis,
  question/sentence) or a single text (sentence, text, content, review), and a label (label, labels, score);
  a float label column means regression, integers, strings or booleans mean classification.

A kind is a candidate when all its columns are found (or given).  Exactly one candidate family is required:
none, or more than one, is a `DataError` that says which option to pass.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import datasets

from autolora.data import DataError

if TYPE_CHECKING:
    from autolora.config import DataConfig

TOKENS_NAMES = ("tokens", "words")
TAGS_NAMES = ("ner_tags", "tags", "labels", "label")
SOURCE_NAMES = ("meaning_representation", "source", "src", "input", "prompt", "context")
TARGET_NAMES = ("target", "tgt", "output", "completion", "response", "summary")
TEXT_PAIRS = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
              ("question", "sentence"))
TEXT_NAMES = ("sentence", "text", "content", "review")
LABEL_NAMES = ("label", "labels", "score")

FLOAT_DTYPES = ("float16", "float32", "float64")


def is_list_feature(feature) -> bool:
    """True for list-valued columns (datasets List/Sequence/LargeList)."""
    return isinstance(feature, (datasets.List, datasets.LargeList, datasets.Sequence, list))


def family_options() -> dict[str, tuple[str, ...]]:
    """Family -> the DataConfig options that hold its columns, as the task classes declare them."""
    from autolora.tasks import TASK_KINDS

    return {task.family: task.column_options for task in TASK_KINDS.values()}


def family_name(family: str) -> str:
    """How messages name a family: its kinds, e.g. "classification/regression"."""
    from autolora.tasks import TASK_KINDS

    return "/".join(kind for kind, task in TASK_KINDS.items() if task.family == family)


def detect(config: DataConfig, train: datasets.Dataset, source: str) -> tuple[str, dict[str, str | None]]:
    """Return (kind, columns) where columns maps option names (e.g. "text_column") to column names or None.

    `source` names the training data in error messages (a file path or a hub dataset).
    """
    from autolora.tasks import TASK_KINDS

    options_of = family_options()
    features = train.features
    existing = ", ".join(features)
    for option in sum(options_of.values(), ()):
        name = getattr(config, option)
        if name is not None and name not in features:
            raise DataError(f"column not found: {source} has no column {name!r} ({option}); columns: {existing}")
    explicit = [family for family, options in options_of.items()
                if any(getattr(config, option) for option in options)]
    if config.task_kind != "auto":
        families = [TASK_KINDS[config.task_kind].family]
    elif len(explicit) > 1:
        raise DataError("ambiguous columns: options were given for "
                        + " and ".join(family_name(family) for family in explicit)
                        + "; pass task_kind to choose one")
    else:
        families = explicit or list(options_of)
    found = {family: _find(family, config, features) for family in families}
    candidates = [family for family, columns in found.items() if columns is not None]
    if len(families) == 1 and not candidates:
        what = config.task_kind if config.task_kind != "auto" else family_name(families[0])
        options = ", ".join(options_of[families[0]])
        raise DataError(f"column not found: cannot find the {what} columns in {source}; columns: "
                        f"{existing}; pass {options}")
    if not candidates:
        raise DataError(f"cannot detect the task from the columns of {source} ({existing}); pass task_kind and "
                        "the column options (text_column/label_column, tokens_column/tags_column or "
                        "source_column/target_column)")
    if len(candidates) > 1:
        fits = " and ".join(family_name(family) for family in candidates)
        raise DataError(f"ambiguous task: the columns of {source} ({existing}) fit {fits}"
                        + "; pass task_kind to choose one")
    family = candidates[0]
    columns = found[family]
    kind = config.task_kind if config.task_kind != "auto" else _sequence_kind(family, features, columns)
    return kind, columns


def _sequence_kind(family: str, features, columns) -> str:
    if family != "sequence":
        return family
    label = features[columns["label_column"]]
    return "regression" if getattr(label, "dtype", None) in FLOAT_DTYPES else "classification"


def _first(names, features, want_list: bool, given: str | None) -> str | None:
    if given is not None:
        return given
    for name in names:
        if name in features and is_list_feature(features[name]) == want_list:
            return name
    return None


def _find(family: str, config: DataConfig, features) -> dict[str, str | None] | None:
    """Columns of one family, or None when a required one is missing."""
    if family == "token_classification":
        columns = {"tokens_column": _first(TOKENS_NAMES, features, True, config.tokens_column),
                   "tags_column": _first(TAGS_NAMES, features, True, config.tags_column)}
        required = columns
    elif family == "generation":
        columns = {"source_column": _first(SOURCE_NAMES, features, False, config.source_column),
                   "target_column": _first(TARGET_NAMES, features, False, config.target_column)}
        required = columns
    else:
        text, pair = config.text_column, config.text_pair_column
        if text is None:
            pairs = [p for p in TEXT_PAIRS if p[0] in features and p[1] in features]
            text, pair = pairs[0] if pairs else (_first(TEXT_NAMES, features, False, None), pair)
        columns = {"text_column": text, "text_pair_column": pair,
                   "label_column": _first(LABEL_NAMES, features, False, config.label_column)}
        required = {key: columns[key] for key in ("text_column", "label_column")}
    return columns if all(required.values()) else None
