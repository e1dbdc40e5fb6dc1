"""report.html: the rule and budget, gate concentration and importance per matrix, the near-uniform warning, and
ranks.json files of every vintage (before the rank rules, the uniform baseline)."""
import json
import math

import pytest
import torch

from autolora.config import AutoLoraConfig
from autolora.injection import gated_layers, inject_gated_lora
from autolora.rank_rules import RankBudget
from autolora.ranks import compute_ranks, save_ranks, uniform_ranks
from autolora.report import (NEAR_UNIFORM_CONCENTRATION, effective_components, gate_concentration, gate_separation,
                             gate_spread, write_report)
from tiny_models import tiny_model

WARNING = "The gates stayed near uniform, so these ranks are mostly noise"
NAMES = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]


def softmax(logits):
    return torch.softmax(torch.tensor(logits, dtype=torch.float64), 0).tolist()


def run_dir(tmp_path, ranks: dict, search: dict | None = None):
    (tmp_path / "ranks.json").write_text(json.dumps(ranks))
    if search is not None:
        (tmp_path / "search.json").write_text(json.dumps(search))
    with open(write_report(str(tmp_path)), encoding="utf-8") as f:
        return f.read()


def threshold_ranks(logits_per_matrix: list[list[float]]) -> dict:
    """A ranks.json as `autolora search` writes it with the threshold rule, built by hand (k = 4)."""
    weights = {n: softmax(logits) for n, logits in zip(NAMES, logits_per_matrix)}
    kept = {n: [j for j, a in enumerate(w) if a >= 0.25 * (1 - 1e-6)] or [max(range(4), key=w.__getitem__)]
            for n, w in weights.items()}
    return {"format_version": 1, "k": 4, "threshold": 0.25, "allow_zero_rank": False, "rule": "threshold",
            "budget": None, "ranks": {n: len(v) for n, v in kept.items()}, "weights": weights, "kept": kept,
            "importance": {n: [0.5, 0.25, 0.125, 0.0625] for n in NAMES}, "importance_score": "spectrum"}


def test_measures_of_separation():
    uniform, one_hot = [0.25] * 4, [1.0, 0.0, 0.0, 0.0]
    assert gate_concentration(uniform) == pytest.approx(0.0, abs=1e-12)
    assert effective_components(uniform) == pytest.approx(4.0)
    assert gate_spread(uniform) == pytest.approx(0.0, abs=1e-12)
    assert gate_concentration(one_hot) == pytest.approx(1.0)
    assert effective_components(one_hot) == pytest.approx(1.0)
    assert gate_spread(one_hot) == pytest.approx(3.0)
    assert math.isnan(gate_concentration([1.0]))
    # Near uniform the concentration is mean_j (k a_j - 1)^2 / (2 log k), as the module docstring says.
    gates = [(1 + e) / 4 for e in (0.1, -0.1, 0.05, -0.05)]
    expected = sum(e * e for e in (0.1, -0.1, 0.05, -0.05)) / 4 / (2 * math.log(4))
    assert gate_concentration(gates) == pytest.approx(expected, rel=0.05)
    assert gate_separation({}) is None


def test_near_uniform_gates_warn(tmp_path):
    # Logits moved by at most 0.04, as a short search at a small gate learning rate leaves them.
    ranks = threshold_ranks([[0.04, 0.0, -0.02, 0.01], [0.0, 0.03, -0.01, 0.0],
                             [-0.03, 0.02, 0.0, 0.01], [0.01, 0.0, 0.0, -0.04]])
    assert gate_separation(ranks["weights"]).near_uniform
    page = run_dir(tmp_path, ranks, {"trajectory": {"steps": [0, 5], "weights": {
        n: [[0.25] * 4, w] for n, w in ranks["weights"].items()}}})
    assert WARNING in page and "search longer or raise the gate learning rate" in page
    assert (tmp_path / "trajectories.png").exists()


def test_separated_gates_do_not_warn_and_show_the_evidence(tmp_path):
    ranks = threshold_ranks([[2.0, 1.5, -1.0, -2.0], [1.0, -1.0, -1.0, -1.0],
                             [1.5, 1.5, 1.5, -3.0], [0.0, 2.0, -2.0, 0.5]])
    separation = gate_separation(ranks["weights"])
    assert not separation.near_uniform and separation.median_concentration > NEAR_UNIFORM_CONCENTRATION
    page = run_dir(tmp_path, ranks)
    assert WARNING not in page
    assert "threshold, k = 4; threshold 0.25 (1/k)" in page and "importance (spectrum)" in page
    assert "0.5 0.25 0.125 0.0625" in page                       # the importance scores, per matrix
    first = ranks["weights"][NAMES[0]]
    assert f"{gate_concentration(first):.3g}" in page and f"{effective_components(first):.3g}" in page


def test_budget_rule_from_a_tiny_model(tmp_path):
    model = tiny_model("bert")
    inject_gated_lora(model, AutoLoraConfig(k=4))
    torch.manual_seed(0)
    for layer in gated_layers(model).values():   # trained-looking LoRA weights and separated gates
        torch.nn.init.normal_(layer.lora_B)
        torch.nn.init.normal_(layer.lora_logits, std=2.0)
    result = compute_ranks(model, rule="budget", budget=RankBudget(total_rank=6))
    save_ranks(result, tmp_path / "ranks.json")
    write_report(str(tmp_path))
    page = (tmp_path / "report.html").read_text()
    assert "budget, k = 4; budget: total rank 6" in page and "total rank 6 over 4 matrices" in page
    assert f"importance ({result.importance_score})" in page
    name = next(iter(result.importance))
    assert " ".join(f"{v:.3g}" for v in result.importance[name]) in page
    assert WARNING not in page


def test_budget_rule_near_uniform_warns_that_the_weights_decide(tmp_path):
    ranks = threshold_ranks([[0.0] * 4] * 4)
    ranks.update(rule="budget", threshold=None, budget={"total_rank": 6, "parameters": None})
    page = run_dir(tmp_path, ranks)
    assert WARNING in page and "follow those more than the search" in page


def test_ranks_json_before_the_rank_rules_still_renders(tmp_path):
    # As `autolora search` wrote it before rule, budget and importance existed.
    weights = {n: softmax([0.5, 0.0, -0.5, 0.0]) for n in NAMES}
    old = {"format_version": 1, "k": 4, "threshold": 0.25, "allow_zero_rank": False,
           "ranks": {n: 2 for n in NAMES}, "weights": weights, "kept": {n: [0, 1] for n in NAMES}}
    page = run_dir(tmp_path, old)
    assert "predates the rank rules" in page and "No importance scores" in page
    assert (tmp_path / "rank_heatmap.png").exists()


def test_importance_without_its_score_name_is_contributions(tmp_path):
    ranks = threshold_ranks([[1.0, 0.0, -1.0, 0.0]] * 4)
    del ranks["importance_score"]   # written by the first rank-rule version: component contributions
    assert "importance (contribution)" in run_dir(tmp_path, ranks)


def test_uniform_baseline_renders_without_gates(tmp_path):
    save_ranks(uniform_ranks(NAMES, 8), tmp_path / "ranks.json")
    write_report(str(tmp_path))
    page = (tmp_path / "report.html").read_text()
    assert "uniform: rank 8 on every matrix" in page and WARNING not in page
    assert "No importance scores" not in page
