"""Each example's main() with few steps: it runs, and what it learns beats its baseline."""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name):
    """Import examples/<name>.py by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_logistic_l2_learned_lambdas_beat_start_and_best_scalar_on_validation():
    result = load("logistic_l2").main(["--outer-steps", "15", "--warmup-steps", "200"])
    assert result["learned"]["val_loss"] < result["before"]["val_loss"]
    assert result["learned"]["val_loss"] < result["best_scalar"]["val_loss"]
    losses = [value for _, value in result["outer_loss_history"]]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("method", ["neumann", "finite_difference"])
def test_logistic_l2_other_methods_lower_validation_loss(method):
    result = load("logistic_l2").main(["--outer-steps", "10", "--warmup-steps", "200", "--method", method])
    assert result["method"] == method
    assert result["learned"]["val_loss"] < result["before"]["val_loss"]


def test_logistic_l2_is_deterministic_for_a_seed():
    args = ["--outer-steps", "3", "--warmup-steps", "50", "--seed", "3"]
    first, second = load("logistic_l2").main(args), load("logistic_l2").main(args)
    assert first["learned"] == second["learned"]
    assert first["most_regularized"] == second["most_regularized"]


def test_hyper_cleaning_downweights_corrupted_labels_and_beats_unweighted():
    result = load("hyper_cleaning").main(["--outer-steps", "30", "--warmup-steps", "100"])
    assert result["learned"]["val_acc"] > result["unweighted"]["val_acc"] + 0.03
    assert result["learned"]["test_acc"] > result["unweighted"]["test_acc"]
    assert result["mean_weight_corrupted"] < 0.5 * result["mean_weight_clean"]
    assert result["detection_precision"] > 0.7  # 0.4 by chance
    accuracies = [acc for _, acc in result["val_acc_during_training"]]
    assert accuracies[-1] > result["unweighted"]["val_acc"]


def test_hyper_cleaning_with_unroll():
    result = load("hyper_cleaning").main(["--outer-steps", "20", "--warmup-steps", "100", "--method", "unroll",
                                          "--unroll-steps", "5"])
    assert result["method"] == "unroll"
    assert result["mean_weight_corrupted"] < result["mean_weight_clean"]
    assert result["learned"]["val_acc"] > result["unweighted"]["val_acc"]


def test_functional_quickstart_implicit_and_long_unroll_match_closed_form():
    errors = load("functional_quickstart").main(["--seed", "1"])["relative_errors"]
    for name in ("exact", "cg", "neumann", "unroll"):
        assert errors[name] < 1e-8, (name, errors[name])
    assert errors["first_order"] == pytest.approx(1.0)  # the outer loss does not depend on lam directly
