"""Rank rules: the paper's threshold, the budgeted global allocation, their registry and their one-line errors."""
import itertools
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from autolora.config import AutoLoraConfig
from autolora.injection import gated_layers, inject_gated_lora
from autolora import rank_rules
from autolora.layers import GatedLoraLinear
from autolora.rank_rules import (BudgetRule, MatrixEvidence, RankBudget, ThresholdRule, check_budget, get_rank_rule,
                                 matrix_evidence, rank_rule_names, register_rank_rule)
from autolora.ranks import compute_ranks, uniform_ranks
from tiny_models import tiny_model


def evidence(scores: list[float], shape=(16, 16), gates=None) -> MatrixEvidence:
    k = len(scores)
    return MatrixEvidence(gates=gates or [1 / k] * k, contributions=list(scores), singular_values=sorted(scores)[::-1],
                          in_features=shape[0], out_features=shape[1])


def brute_force_total_rank(matrices: dict[str, MatrixEvidence], budget: int, allow_zero: bool) -> float:
    """The largest total importance any allocation of exactly ``budget`` components can keep (the oracle)."""
    items = [(name, j, s) for name, m in matrices.items() for j, s in enumerate(m.contributions)]
    best = -1.0
    for chosen in itertools.combinations(items, budget):
        names = {name for name, _, _ in chosen}
        if not allow_zero and names != set(matrices):
            continue
        best = max(best, sum(s for _, _, s in chosen))
    return best


@pytest.mark.parametrize("allow_zero", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_total_rank_budget_keeps_the_most_important_components(seed, allow_zero):
    g = torch.Generator().manual_seed(seed)
    matrices = {f"m{i}": evidence(torch.rand(3, generator=g).tolist()) for i in range(3)}
    for budget in range(1 if allow_zero else 3, 10):
        kept = BudgetRule(score="contribution").select(matrices, 3, allow_zero, RankBudget(total_rank=budget))
        assert sum(map(len, kept.values())) == budget                       # met exactly
        total = sum(matrices[n].contributions[j] for n, js in kept.items() for j in js)
        assert total == pytest.approx(brute_force_total_rank(matrices, budget, allow_zero))
        if not allow_zero:
            assert all(kept.values())


def test_budget_goes_where_the_update_is_and_zero_rank_elsewhere():
    matrices = {"big": evidence([5, 4, 3, 2]), "small": evidence([0.1, 0.1, 0.1, 0.1]), "mid": evidence([1, 0, 0, 0])}
    kept = BudgetRule(score="contribution").select(matrices, 4, True, RankBudget(total_rank=5))
    assert {n: len(v) for n, v in kept.items()} == {"big": 4, "small": 0, "mid": 1}


def test_parameter_budget_is_met_from_below_as_closely_as_the_greedy_pass_gets():
    # a rank of "wide" costs 8 + 32 = 40 parameters, of "narrow" 8 + 8 = 16
    matrices = {"wide": evidence([3, 2, 1], shape=(8, 32)), "narrow": evidence([2.5, 0.5, 0.4], shape=(8, 8))}
    kept = BudgetRule(score="contribution").select(matrices, 3, True, RankBudget(parameters=100))
    # greedy by importance: wide 3 (40), narrow 2.5 (56), wide 2 (96); wide 1 no longer fits, nor narrow 0.5 (112)
    assert {n: len(v) for n, v in kept.items()} == {"wide": 2, "narrow": 1}
    spent = sum(len(v) * matrices[n].parameters_per_rank for n, v in kept.items())
    assert spent == 96 <= 100


def test_budget_rule_scores_differ_and_gate_ignores_the_update():
    a = evidence([1.0, 0.0], gates=[0.5, 0.5])
    b = evidence([0.1, 0.0], gates=[0.9, 0.1])
    by_gate = BudgetRule(score="gate").select({"a": a, "b": b}, 2, True, RankBudget(total_rank=1))
    by_update = BudgetRule(score="contribution").select({"a": a, "b": b}, 2, True, RankBudget(total_rank=1))
    assert by_gate == {"a": [], "b": [0]} and by_update == {"a": [0], "b": []}


def test_spectrum_is_the_singular_values_of_the_gated_update():
    torch.manual_seed(0)
    for shape, k in (((12, 20), 4), ((3, 5), 8)):   # the second has fewer dimensions than components
        layer = GatedLoraLinear(nn.Linear(*shape, dtype=torch.float64), k=k, lora_alpha=6.0)
        with torch.no_grad():
            layer.lora_B.normal_()
            layer.lora_logits.normal_()
        found = torch.tensor(matrix_evidence(layer).singular_values, dtype=torch.float64)
        dense = torch.linalg.svdvals(layer.delta_weight().detach())
        torch.testing.assert_close(found, dense[:len(found)], rtol=1e-10, atol=1e-12)
        assert len(found) == min(k, *shape)


def test_spectrum_reads_the_rank_of_the_update_not_the_spread_of_its_components():
    """Four components that all carry one rank-1 direction: spectrum keeps one, contribution wants four."""
    torch.manual_seed(0)
    rank_one = GatedLoraLinear(nn.Linear(16, 16), k=4, lora_alpha=4.0)
    rank_four = GatedLoraLinear(nn.Linear(16, 16), k=4, lora_alpha=4.0)
    with torch.no_grad():
        u, v = torch.randn(16), torch.randn(16)
        rank_one.lora_A.copy_(v.expand(4, 16))
        rank_one.lora_B.copy_(u[:, None].expand(16, 4))
        rank_four.lora_A.copy_(torch.linalg.qr(torch.randn(16, 4))[0].t() * v.norm())
        rank_four.lora_B.copy_(torch.linalg.qr(torch.randn(16, 4))[0] * u.norm() / 2)
    matrices = {"one": matrix_evidence(rank_one), "four": matrix_evidence(rank_four)}
    spectrum = BudgetRule(score="spectrum").select(matrices, 4, True, RankBudget(total_rank=5))
    contribution = BudgetRule(score="contribution").select(matrices, 4, True, RankBudget(total_rank=5))
    assert {n: len(v) for n, v in spectrum.items()} == {"one": 1, "four": 4}
    assert {n: len(v) for n, v in contribution.items()} == {"one": 4, "four": 1}


def test_threshold_rule_is_the_papers_rule():
    matrices = {"a": evidence([0, 0, 0, 0], gates=[0.4, 0.1, 0.25, 0.25]), "b": evidence([0, 0], gates=[0.7, 0.3])}
    assert ThresholdRule().select(matrices, 4, False) == {"a": [0, 2, 3], "b": [0, 1]}
    assert ThresholdRule(threshold=0.5).select(matrices, 4, True) == {"a": [], "b": [0]}
    assert ThresholdRule(threshold=0.5).select(matrices, 4, False) == {"a": [0], "b": [0]}


def test_compute_ranks_with_the_budget_rule_on_a_model():
    model = tiny_model("bert")
    inject_gated_lora(model, AutoLoraConfig(k=4, target_modules=["all-linear"]))
    layers = list(gated_layers(model).values())
    assert len(layers) == 13   # q, k, v, attention output, intermediate, output in 2 layers, and the pooler
    torch.manual_seed(0)
    with torch.no_grad():
        layers[3].lora_B.normal_()                   # only two matrices learned an update
        layers[7].lora_B[:, :2].normal_()
    result = compute_ranks(model, allow_zero_rank=True, rule="budget", budget=RankBudget(total_rank=6))
    ranks = list(result.ranks.values())
    assert ranks[3] == 4 and ranks[7] == 2 and sum(ranks) == 6
    assert result.rule == "budget" and result.budget == {"total_rank": 6, "parameters": None}
    assert result.importance_score == "spectrum" and len(result.importance) == 13 and result.threshold is None


def test_budget_range_errors_name_the_valid_range():
    shapes = {f"m{i}": (16, 16) for i in range(4)}
    with pytest.raises(ValueError, match=r"--rank-budget must be in \[4, 32\] .* got 3"):
        check_budget(RankBudget(total_rank=3), shapes, 8, allow_zero_rank=False)
    with pytest.raises(ValueError, match=r"--rank-budget must be in \[1, 32\] .* got 33"):
        check_budget(RankBudget(total_rank=33), shapes, 8, allow_zero_rank=True)
    with pytest.raises(ValueError, match=r"--parameter-budget must be in \[128, 1024\]"):
        check_budget(RankBudget(parameters=127), shapes, 8, allow_zero_rank=False)
    check_budget(RankBudget(total_rank=1), shapes, 8, allow_zero_rank=True)
    check_budget(RankBudget(parameters=32), shapes, 8, allow_zero_rank=True)


@pytest.mark.parametrize("kwargs, message", [
    ({"rank_rule": "bogus"}, r"--rank-rule 'bogus' is not a rank rule; valid: budget, threshold"),
    ({"rank_rule": "budget"}, r"needs exactly one of --rank-budget and --parameter-budget"),
    ({"rank_rule": "budget", "rank_budget": 8, "parameter_budget": 100}, r"needs exactly one of"),
    ({"rank_rule": "threshold", "rank_budget": 8}, r"--rank-budget applies to a budgeted --rank-rule"),
    ({"rank_rule": "budget", "rank_budget": 8, "threshold": 0.2}, r"--threshold applies to --rank-rule threshold"),
    ({"rank_rule": "budget", "rank_budget": 0}, r"--rank-budget must be an integer >= 1"),
])
def test_config_refuses_inconsistent_rule_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AutoLoraConfig(**kwargs)


def test_a_budget_implies_the_budget_rule_and_no_budget_the_papers_rule():
    assert AutoLoraConfig().rank_rule == "threshold" and AutoLoraConfig().budget is None
    assert AutoLoraConfig(k=16, rank_budget=96).rank_rule == "budget"
    assert AutoLoraConfig(k=16, parameter_budget=9000).budget == RankBudget(parameters=9000)


def test_config_round_trip_with_a_budget():
    config = AutoLoraConfig(k=16, rank_rule="budget", parameter_budget=5000, target_modules="all-linear")
    assert AutoLoraConfig.from_json(config.to_json()) == config
    assert config.budget == RankBudget(parameters=5000) and config.target_modules == ["all-linear"]


def test_users_register_their_own_rule(monkeypatch):
    monkeypatch.setattr(rank_rules, "_RULES", dict(rank_rules._RULES))   # the test's rule leaves with the test

    @register_rank_rule
    @dataclass
    class LastComponent:
        name: ClassVar[str] = "test_last_component"
        uses_budget: ClassVar[bool] = False

        def select(self, evidence, k, allow_zero_rank, budget=None):
            return {n: [k - 1] for n in evidence}

    assert "test_last_component" in rank_rule_names()
    model = tiny_model("bert")
    inject_gated_lora(model, AutoLoraConfig(k=4, rank_rule="test_last_component"))
    result = compute_ranks(model, rule=get_rank_rule("test_last_component"))
    assert set(result.ranks.values()) == {1} and result.rule == "test_last_component"
    with pytest.raises(ValueError, match="already registered"):
        register_rank_rule(type("Other", (), {"name": "test_last_component"}))


def test_uniform_ranks():
    result = uniform_ranks(["a", "b"], 4, k=8)
    assert result.ranks == {"a": 4, "b": 4} and result.rule == "uniform" and result.k == 8
    with pytest.raises(ValueError, match="--uniform-rank must be an integer >= 1"):
        uniform_ranks(["a"], 0)
