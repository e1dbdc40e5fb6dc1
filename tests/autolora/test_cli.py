import json
import logging
import os
import re

import pytest
import torch
from peft import PeftModel

from autolora.cli import main
from autolora.demo import _NEGATIVE, _NOUNS, _POSITIVE, _TEMPLATES, generate_sentiment_data


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A local tiny BERT folder (config + weights + WordPiece tokenizer) and generated jsonl data."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny")
    words = sorted({w for t in _TEMPLATES for w in t.split()} | set(_POSITIVE + _NEGATIVE + _NOUNS) | {"not"})
    words = [w for w in words if "{" not in w]
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    tokenizer = BertTokenizerFast(str(root / "vocab.txt"))  # positional: transformers 5 ignores vocab_file=
    assert len(tokenizer) == len(words) + 5, "the tokenizer lost its vocabulary"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    model_dir = root / "model"
    BertForSequenceClassification(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    for split, n, seed in (("train", 48, 0), ("validation", 16, 1)):
        rows = generate_sentiment_data(n, seed)
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def common(tiny_dir, out):
    return ["--model-name-or-path", str(tiny_dir / "model"), "--train-file", str(tiny_dir / "train.jsonl"),
            "--validation-file", str(tiny_dir / "validation.jsonl"), "--output-dir", str(out), "--no-progress",
            "--k", "4"]


def test_run_writes_every_output_and_the_adapter_loads(tiny_dir, tmp_path):
    out = tmp_path / "run"
    args = ["run", *common(tiny_dir, out), "--search-max-steps", "4", "--search-batch-size", "8",
            "--retrain-max-steps", "3", "--retrain-batch-size", "8", "--record-every", "2", "--merge"]
    assert main(args) == 0
    for name in ("ranks.json", "peft_config.json", "search.json", "metrics.json", "config.json", "report.html",
                 "rank_heatmap.png", "trajectories.png", "adapter/adapter_config.json", "merged/config.json"):
        assert (out / name).exists(), name
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temp leftovers
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "f1"} <= set(metrics["eval"])
    assert metrics["search"]["trainable_parameters"]["outer"] == 4 * 4
    assert metrics["retrain"]["trainable_parameters"] > 0 and metrics["search"]["wall_time_s"] >= 0
    ranks = json.loads((out / "ranks.json").read_text())
    assert len(ranks["ranks"]) == 4 and ranks["k"] == 4
    assert "data:image/png;base64," in (out / "report.html").read_text()
    # The saved adapter is a plain PEFT adapter.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = AutoModelForSequenceClassification.from_pretrained(tiny_dir / "model")
    loaded = PeftModel.from_pretrained(base, out / "adapter").eval()
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()
    batch = AutoTokenizer.from_pretrained(tiny_dir / "model")(["the film was great ."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, loaded(**batch).logits, atol=1e-5, rtol=1e-4)
    # A second run into the same directory is refused without --overwrite.
    assert main(args) == 1


def test_search_then_retrain_then_report(tiny_dir, tmp_path, capsys):
    out, out2 = tmp_path / "search", tmp_path / "retrain"
    assert main(["search", *common(tiny_dir, out), "--search-max-steps", "2", "--search-batch-size", "8",
                 "--method", "identity_implicit"]) == 0
    assert not (out / "adapter").exists()
    assert main(["retrain", *common(tiny_dir, out2), "--ranks", str(out / "ranks.json"),
                 "--retrain-max-steps", "2"]) == 0
    assert (out2 / "adapter" / "adapter_model.safetensors").exists()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists()


def test_bad_target_is_a_one_line_error(tiny_dir, tmp_path, capsys):
    code = main(["search", *common(tiny_dir, tmp_path / "x"), "--target-modules", "q_proj",
                 "--search-max-steps", "1"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("autolora search: error")]
    assert code == 1 and len(err) == 1 and "q_proj" in err[0] and "attention.self.query" in err[0]


def test_bad_option_names_the_field(tiny_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["search", *common(tiny_dir, tmp_path / "y"), "--threshold", "1.5"])
    assert "threshold" in capsys.readouterr().err


def test_search_is_reproducible_when_the_head_is_new(tiny_dir, tmp_path):
    """A checkpoint without the task head (a bare encoder) gets a new head at load: it must come from the seed,
    not from whatever the global random state was."""
    from transformers import AutoTokenizer, BertModel

    encoder_dir = tmp_path / "encoder"
    BertModel.from_pretrained(tiny_dir / "model").save_pretrained(encoder_dir)
    AutoTokenizer.from_pretrained(tiny_dir / "model").save_pretrained(encoder_dir)
    weights = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        out = tmp_path / f"search{global_seed}"
        args = common(tiny_dir, out)
        args[args.index("--model-name-or-path") + 1] = str(encoder_dir)
        assert main(["search", *args, "--search-max-steps", "3", "--search-batch-size", "8"]) == 0
        weights.append(json.loads((out / "ranks.json").read_text()))
    assert weights[0] == weights[1]


def test_budget_rule_on_all_linear_meets_the_budget_and_round_trips_through_peft(tiny_dir, tmp_path):
    """--rank-rule budget over every linear layer: 13 matrices, total rank 20 exactly, zero rank where it says."""
    out = tmp_path / "budget"
    args = ["run", *common(tiny_dir, out), "--target-modules", "all-linear", "--rank-rule", "budget",
            "--rank-budget", "20", "--allow-zero-rank", "--search-max-steps", "4", "--search-batch-size", "8",
            "--retrain-max-steps", "2", "--retrain-batch-size", "8"]
    assert main(args) == 0
    ranks = json.loads((out / "ranks.json").read_text())
    assert len(ranks["ranks"]) == 13 and sum(ranks["ranks"].values()) == 20
    assert ranks["rule"] == "budget" and ranks["budget"]["total_rank"] == 20
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(tiny_dir / "model")
    loaded = PeftModel.from_pretrained(base, out / "adapter")
    adapted = {name.removeprefix("base_model.model."): module.r["default"] for name, module in loaded.named_modules()
               if hasattr(module, "r") and isinstance(module.r, dict) and "default" in module.r}
    assert adapted == {name: r for name, r in ranks["ranks"].items() if r > 0}


@pytest.mark.parametrize("flags, message", [
    (["--rank-rule", "budget", "--rank-budget", "3"], r"--rank-budget must be in \[4, 16\]"),
    (["--rank-rule", "budget", "--rank-budget", "17"], r"--rank-budget must be in \[4, 16\]"),
    (["--rank-rule", "bogus"], r"not a rank rule; valid: budget, threshold"),
    (["--target-modules", "q_proj"], r"matches no nn.Linear"),
    (["--method", "cgg"], r"--method is not usable: unknown hypergradient method 'cgg'; registered methods: "
                          r".*finite_difference"),
    (["--method-kwargs", '{"bogus": 1}'], r"--method-kwargs is not usable: .* has no setting bogus; its settings:"),
])
def test_bad_rule_settings_fail_in_one_line_and_write_nothing(tiny_dir, tmp_path, capsys, flags, message):
    out = tmp_path / "refused"
    try:   # a config error is argparse's usage error (exit 2), a model-dependent one returns 1
        code = main(["search", *common(tiny_dir, out), "--search-max-steps", "2", *flags])
    except SystemExit as stop:
        code = stop.code
    assert code in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert re.search(message, err[-1]), err
    assert not out.exists()   # nothing half-written: the corrected rerun needs no --overwrite


def test_retrain_uniform_rank_is_the_uniform_baseline(tiny_dir, tmp_path):
    out = tmp_path / "uniform"
    assert main(["retrain", *common(tiny_dir, out), "--uniform-rank", "3", "--retrain-max-steps", "2",
                 "--retrain-batch-size", "8"]) == 0
    ranks = json.loads((out / "ranks.json").read_text())
    assert set(ranks["ranks"].values()) == {3} and len(ranks["ranks"]) == 4 and ranks["rule"] == "uniform"
    peft_config = json.loads((out / "peft_config.json").read_text())
    assert peft_config["r"] == 3 and not peft_config["rank_pattern"]
    assert (out / "adapter" / "adapter_config.json").exists()
    assert main(["retrain", *common(tiny_dir, tmp_path / "both"), "--uniform-rank", "3", "--ranks",
                 str(out / "ranks.json")]) == 1


def test_a_labeled_test_file_is_scored_after_retraining_and_an_unlabeled_one_predicted(tiny_dir, tmp_path):
    retrain = ["--uniform-rank", "2", "--retrain-max-steps", "2", "--retrain-batch-size", "8"]
    out = tmp_path / "labeled"  # the validation rows as test rows: the same model scores them the same
    assert main(["retrain", *common(tiny_dir, out), *retrain, "--test-file", str(tiny_dir / "validation.jsonl")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "f1"} <= set(metrics["test"]) and metrics["test"] == metrics["eval"]
    unlabeled = tmp_path / "unlabeled.jsonl"
    rows = [json.loads(line) for line in (tiny_dir / "validation.jsonl").read_text().splitlines()]
    unlabeled.write_text("".join(json.dumps({"sentence": row["sentence"]}) + "\n" for row in rows))
    out = tmp_path / "unlabeled"
    assert main(["retrain", *common(tiny_dir, out), *retrain, "--test-file", str(unlabeled)]) == 0
    assert "test" not in json.loads((out / "metrics.json").read_text())
    # predicted instead, one line per row in order: the same retraining (same seed) as the labeled run, so its
    # predictions score what that run scored
    lines = [json.loads(line) for line in (out / "predictions_test.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(len(rows)))
    accuracy = sum(line["prediction"] == str(row["label"]) for line, row in zip(lines, rows)) / len(rows)
    assert accuracy == metrics["test"]["accuracy"]
    assert main(["retrain", *common(tiny_dir, out), *retrain, "--overwrite"]) == 0
    assert not (out / "predictions_test.jsonl").exists()  # an earlier adapter's predictions are not this one's
    out = tmp_path / "labeled"  # retrained over the labeled run without a test file: no stale score of the old one
    assert main(["retrain", *common(tiny_dir, out), *retrain, "--overwrite"]) == 0
    assert "test" not in json.loads((out / "metrics.json").read_text())


def test_a_failing_test_scoring_keeps_the_adapter_and_the_eval_scores(tiny_dir, tmp_path, monkeypatch, capsys):
    from autolora import pipeline

    def fail(*args):
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(pipeline, "_score_test_split", fail)
    out = tmp_path / "out"
    assert main(["retrain", *common(tiny_dir, out), "--uniform-rank", "2", "--retrain-max-steps", "2", "--merge",
                 "--test-file", str(tiny_dir / "validation.jsonl")]) == 1
    assert "scoring failed" in capsys.readouterr().err
    assert (out / "adapter" / "adapter_config.json").exists()
    assert {"accuracy", "f1"} <= set(json.loads((out / "metrics.json").read_text())["eval"])
    assert not (out / "merged").exists()  # merging consumes the model, so it comes after every score


def test_the_adapter_carries_the_label_names(tiny_dir, tmp_path):
    """Three named classes on a two-label checkpoint: the task's head replaces the checkpoint's, and the adapter
    reloaded as docs/autolora.md shows predicts the names and scores what metrics.json says."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    names = ["negative", "neutral", "positive"]
    splits = {}
    for split, n, seed in (("train", 48, 0), ("validation", 24, 1)):
        splits[split] = [{"sentence": row["sentence"], "label": "neutral" if i % 3 == 0 else names[2 * row["label"]]}
                         for i, row in enumerate(generate_sentiment_data(n, seed))]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in splits[split]))
    out = tmp_path / "labels"
    args = common(tiny_dir, out)
    args[args.index("--train-file") + 1] = str(tmp_path / "train.jsonl")
    args[args.index("--validation-file") + 1] = str(tmp_path / "validation.jsonl")
    assert main(["retrain", *args, "--uniform-rank", "2", "--retrain-max-steps", "3", "--retrain-batch-size", "8",
                 "--retrain-learning-rate", "0.01"]) == 0

    config = AutoConfig.from_pretrained(out / "adapter")
    assert config.id2label == dict(enumerate(names)) and config.label2id == {n: i for i, n in enumerate(names)}
    base = AutoModelForSequenceClassification.from_pretrained(tiny_dir / "model", config=config,
                                                              ignore_mismatched_sizes=True)
    model = PeftModel.from_pretrained(base, out / "adapter").eval()
    rows = splits["validation"]
    batch = AutoTokenizer.from_pretrained(tiny_dir / "model")([row["sentence"] for row in rows], padding=True,
                                                              return_tensors="pt")
    with torch.no_grad():
        predicted = [model.config.id2label[i] for i in model(**batch).logits.argmax(-1).tolist()]
    accuracy = sum(p == row["label"] for p, row in zip(predicted, rows)) / len(rows)
    assert accuracy == pytest.approx(json.loads((out / "metrics.json").read_text())["eval"]["accuracy"])


def test_log_level_is_accepted_before_and_after_the_command():
    from autolora.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["report", "out", "--log-level", "WARNING"]).log_level == "WARNING"
    assert parser.parse_args(["--log-level", "ERROR", "report", "out"]).log_level == "ERROR"
    assert parser.parse_args(["demo"]).log_level == "INFO"
    assert parser.parse_args(["run", "--log-level", "DEBUG"]).log_level == "DEBUG"


def test_default_output_is_autolora_alone_and_names_a_new_head_once(tiny_dir, tmp_path):
    """A process of its own on a bare encoder (the head is new, as with MiniLM): stderr holds autolora's log lines
    only (no load report, progress bars or warnings of transformers, datasets or PEFT), the new head in one of them,
    although the model is loaded twice (search, retrain)."""
    import subprocess
    import sys

    from transformers import AutoTokenizer, BertModel

    encoder_dir = tmp_path / "encoder"
    BertModel.from_pretrained(tiny_dir / "model").save_pretrained(encoder_dir)
    AutoTokenizer.from_pretrained(tiny_dir / "model").save_pretrained(encoder_dir)
    args = common(tiny_dir, tmp_path / "out")
    args[args.index("--model-name-or-path") + 1] = str(encoder_dir)
    done = subprocess.run([sys.executable, "-m", "autolora.cli", "run", *args, "--search-max-steps", "2",
                           "--retrain-max-steps", "2"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert all(re.match(r"\d\d:\d\d:\d\d INFO autolora\.", line) for line in lines), done.stderr
    assert [line.split(": ", 1)[1] for line in lines if "new task head" in line] == [
        f"new task head classifier: initialised afresh ({encoder_dir} has none of this shape) and trained with the "
        "LoRA weights"]


def test_scoring_generation_logs_nothing_of_rouge_score(caplog):
    """rouge-score logs "Using default tokenizer." through absl at INFO each time it scores; the CLI keeps it out."""
    from autolora.cli import _quiet_third_party
    from autolora.metrics import generation_metrics

    absl = logging.getLogger("absl")
    level = absl.level
    try:
        _quiet_third_party()
        with caplog.at_level(logging.INFO):
            generation_metrics(["a cat sat"], [["a cat sat down"]])
    finally:
        absl.setLevel(level)  # other tests see the logger as they would without this one
    assert not [r for r in caplog.records if r.name.startswith("absl")], caplog.text
