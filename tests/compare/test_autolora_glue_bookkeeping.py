"""bench/autolora_glue.py's bookkeeping, without data or models: the seed-noise judgement, the seed agreement,
the shuffled-ranks control and which learning rates a run calibrates."""
import dataclasses

import pytest

from bench import autolora_glue


def test_shuffled_ranks_are_a_seeded_permutation():
    ranks = [1, 2, 3, 4, 5, 6, 7, 8, 2, 3, 4, 5]
    shuffled = autolora_glue.shuffled_ranks(ranks, 0)
    assert sorted(shuffled) == sorted(ranks) and shuffled != ranks  # the same budget, placed elsewhere
    assert autolora_glue.shuffled_ranks(ranks, 0) == shuffled != autolora_glue.shuffled_ranks(ranks, 1)
    assert ranks == [1, 2, 3, 4, 5, 6, 7, 8, 2, 3, 4, 5]  # the searched ranks are left as they were


def test_only_the_learning_rates_the_methods_need_are_calibrated():
    families_for = autolora_glue.families_for
    assert families_for(["lora_r2", "lora_shuffled"]) == ["lora_r8"]
    assert families_for(["full"]) == ["full"]
    assert families_for(["adalora"]) == ["lora_r8", "adalora"]  # its budget needs an AutoLoRA run
    assert families_for(autolora_glue.METHODS) == ["lora_r8", "full", "adalora"]
    # per method: every rank and AutoLoRA's retraining get their own rate; every search runs at r = 8's
    assert families_for(["lora_r2"], lr_per_method=True) == ["lora_r2"]
    assert families_for(["autolora_nometa"], lr_per_method=True) == ["lora_r8", "autolora"]
    assert families_for(["lora_shuffled", "lora_r4"], lr_per_method=True) == ["lora_r8", "lora_r4", "autolora"]
    assert families_for(autolora_glue.METHODS, lr_per_method=True) == list(autolora_glue.FAMILIES)


def test_each_method_trains_at_its_familys_rate():
    family_of = autolora_glue.family_of
    assert {m: family_of(m) for m in ("lora_r1", "autolora", "lora_shuffled", "adalora", "full")} == {
        "lora_r1": "lora_r8", "autolora": "lora_r8", "lora_shuffled": "lora_r8", "adalora": "adalora",
        "full": "full"}
    assert {m: family_of(m, True) for m in ("lora_r1", "autolora_identity", "lora_shuffled", "adalora")} == {
        "lora_r1": "lora_r1", "autolora_identity": "autolora", "lora_shuffled": "autolora", "adalora": "adalora"}
    assert all(family_of(m, True) in autolora_glue.FAMILIES for m in autolora_glue.METHODS)
    lrs = {"lora_lr": 3e-3, "lora_r4_lr": 1e-3, "autolora_lr": 1e-2, "full_lr": 2e-4}
    assert [autolora_glue.final_rate(m, lrs) for m in ("lora_r4", "lora_shuffled", "full")] == [3e-3, 3e-3, 2e-4]
    assert [autolora_glue.final_rate(m, lrs, True) for m in ("lora_r4", "lora_shuffled", "full")] == [1e-3, 1e-2, 2e-4]


def test_results_written_before_a_setting_field_existed_count_as_its_default():
    setting = autolora_glue.SETTINGS["cpu"]
    older = autolora_glue.definition(setting)
    del older["lr_per_method"]  # a folder written before the field existed
    autolora_glue.check_definition(older, setting, "runs.jsonl")
    with pytest.raises(ValueError, match="changed: lr_per_method"):
        autolora_glue.check_definition(older, dataclasses.replace(setting, lr_per_method=True),
                                        "runs.jsonl")
    # a family's calibration does not depend on which rates the runs use, so it is shared
    autolora_glue.check_definition(autolora_glue.definition(setting, calibration=True),
                                    dataclasses.replace(setting, lr_per_method=True),
                                    "calibration.json", calibration=True)
    with pytest.raises(ValueError, match="changed: steps"):
        autolora_glue.check_definition(older, dataclasses.replace(setting, steps=1), "runs.jsonl")


def test_difference_to_autolora_is_judged_against_seed_noise():
    # paired by seed: a constant shift of 0.01 is beyond noise even though each method varies by 0.1 over seeds
    assert "beyond" in autolora_glue.difference_to({0: 0.71, 1: 0.81, 2: 0.91}, {0: 0.70, 1: 0.80, 2: 0.90})
    # differences 0.05, -0.03, 0.04: mean 0.02, sd 0.0436, 95% half-width 4.303 * 0.0436 / sqrt(3) = 0.108
    assert autolora_glue.difference_to({0: 0.75, 1: 0.77, 2: 0.84}, {0: 0.70, 1: 0.80, 2: 0.80}) == \
        "+0.020 +- 0.108 (within noise)"
    assert autolora_glue.difference_to({0: 0.5, 1: 0.6}, {1: 0.4}) == "+0.200 (1 seed)"  # only shared seeds count


def test_seed_agreement_is_the_mean_pairwise_correlation_of_ranks():
    import numpy as np

    vectors = [[1, 2, 3, 4], [2, 2, 3, 5], [4, 3, 2, 1], [3, 3, 3, 3]]  # the constant vector has no correlation
    pairs = [np.corrcoef(a, b)[0, 1] for i, a in enumerate(vectors[:3]) for b in vectors[i + 1:3]]
    assert autolora_glue.seed_agreement(vectors) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert autolora_glue.seed_agreement([[1, 2], [3, 3]]) is None
