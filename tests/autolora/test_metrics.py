"""Metrics against values computed by hand."""
import math

import pytest

from autolora.tasks import compute_metrics, default_metric


def test_classification_binary_by_hand():
    # confusion matrix (reference rows, prediction columns): TN=2, FP=1, FN=1, TP=2
    references = [0, 0, 0, 1, 1, 1]
    predictions = [0, 0, 1, 0, 1, 1]
    metrics = compute_metrics("classification", predictions, references, num_labels=2)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["f1"] == pytest.approx(2 / 3)  # precision 2/3, recall 2/3
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3*3*3*3) = 1/3
    assert metrics["matthews_correlation"] == pytest.approx(1 / 3)


def test_classification_multiclass_uses_macro_f1():
    references = [0, 1, 2, 2]
    predictions = [0, 1, 2, 1]
    metrics = compute_metrics("classification", predictions, references, num_labels=3)
    # per-class F1: 1, 2/3 (P 1/2, R 1), 2/3 (P 1, R 1/2) -> macro 7/9
    assert metrics["f1"] == pytest.approx(7 / 9)
    assert metrics["accuracy"] == pytest.approx(0.75)


def test_regression_by_hand():
    metrics = compute_metrics("regression", [1.0, 2.0, 3.0], [2.0, 4.0, 5.0])
    # pearson of (1,2,3) and (2,4,5): cov 1.5, var 1 and 7/3 -> 1.5 / sqrt(7/3)
    assert metrics["pearson"] == pytest.approx(1.5 / math.sqrt(7 / 3))
    assert metrics["spearmanr"] == pytest.approx(1.0)
    assert metrics["mse"] == pytest.approx((1 + 4 + 4) / 3)


def test_regression_constant_predictions_give_zero_correlation():
    metrics = compute_metrics("regression", [1.0, 1.0, 1.0], [0.0, 1.0, 2.0])
    assert metrics["pearson"] == 0.0 and metrics["spearmanr"] == 0.0


def test_seqeval_entities_by_hand():
    references = [["B-PER", "I-PER", "O", "B-LOC"]]
    predictions = [["B-PER", "I-PER", "O", "O"]]
    metrics = compute_metrics("token_classification", predictions, references)
    assert metrics["precision"] == pytest.approx(1.0)  # 1 predicted entity, correct
    assert metrics["recall"] == pytest.approx(0.5)  # 1 of 2 entities found
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(0.75)


def test_bleu_and_rouge_of_identical_strings():
    texts = ["the cat sat on the mat today", "a dog runs in the park"]
    metrics = compute_metrics("generation", texts, [[t] for t in texts])
    assert metrics["bleu"] == pytest.approx(100.0)
    assert metrics["rougeL"] == pytest.approx(1.0)


def test_generation_takes_the_best_of_several_references():
    prediction = ["the cat sat on the mat today"]
    one = compute_metrics("generation", prediction, [["a completely different sentence here"]])
    several = compute_metrics("generation", prediction,
                              [["a completely different sentence here", "the cat sat on the mat today"]])
    assert several["bleu"] == pytest.approx(100.0) and one["bleu"] < 10
    assert several["rougeL"] == pytest.approx(1.0) and one["rougeL"] < 0.5


def test_generation_accepts_ragged_reference_lists():
    predictions = ["the cat sat on the mat", "a dog runs in the park"]
    metrics = compute_metrics("generation", predictions,
                              [["the cat sat on the mat", "the cat is on the mat"], ["a dog runs in the park"]])
    assert metrics["bleu"] == pytest.approx(100.0)


def test_rouge_l_by_hand():
    # LCS("the cat sat", "the cat ran") = 2 tokens: P = R = F = 2/3
    metrics = compute_metrics("generation", ["the cat sat"], [["the cat ran"]])
    assert metrics["rougeL"] == pytest.approx(2 / 3)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown kind 'ranking'.*classification"):
        compute_metrics("ranking", [], [])
    with pytest.raises(ValueError, match="one non-empty list of references per prediction"):
        compute_metrics("generation", ["a"], [])
    with pytest.raises(ValueError, match="unknown kind"):
        default_metric("ranking")


@pytest.mark.parametrize("kind, metric", [("classification", "accuracy"), ("regression", "pearson"),
                                          ("token_classification", "f1"), ("generation", "bleu")])
def test_default_metric(kind, metric):
    assert default_metric(kind) == metric
