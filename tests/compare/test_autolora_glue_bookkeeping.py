"""bench/autolora_glue.py's bookkeeping, without data or models: the seed-noise judgement, the seed agreement,
the shuffled-ranks control and which learning rates a run calibrates."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import autolora_glue  # noqa: E402


def test_shuffled_ranks_are_a_seeded_permutation():
    ranks = [1, 2, 3, 4, 5, 6, 7, 8, 2, 3, 4, 5]
    shuffled = autolora_glue.shuffled_ranks(ranks, 0)
    assert sorted(shuffled) == sorted(ranks) and shuffled != ranks  # the same budget, placed elsewhere
    assert autolora_glue.shuffled_ranks(ranks, 0) == shuffled != autolora_glue.shuffled_ranks(ranks, 1)
    assert ranks == [1, 2, 3, 4, 5, 6, 7, 8, 2, 3, 4, 5]  # the searched ranks are left as they were


def test_only_the_learning_rates_the_methods_need_are_calibrated():
    assert autolora_glue.families_for(["lora_r2", "lora_shuffled"]) == ["lora_r8"]
    assert autolora_glue.families_for(["full"]) == ["full"]
    assert autolora_glue.families_for(["adalora"]) == ["lora_r8", "adalora"]  # its budget needs an AutoLoRA run
    assert autolora_glue.families_for(autolora_glue.METHODS) == list(autolora_glue.FAMILIES)


def test_difference_to_autolora_is_judged_against_seed_noise():
    # paired by seed: a constant shift of 0.01 is beyond noise even though each method varies by 0.1 over seeds
    assert "beyond" in autolora_glue._versus({0: 0.71, 1: 0.81, 2: 0.91}, {0: 0.70, 1: 0.80, 2: 0.90})
    # differences 0.05, -0.03, 0.04: mean 0.02, sd 0.0436, 95% half-width 4.303 * 0.0436 / sqrt(3) = 0.108
    assert autolora_glue._versus({0: 0.75, 1: 0.77, 2: 0.84}, {0: 0.70, 1: 0.80, 2: 0.80}) == \
        "+0.020 +- 0.108 (within noise)"
    assert autolora_glue._versus({0: 0.5, 1: 0.6}, {1: 0.4}) == "+0.200 (1 seed)"  # only shared seeds count


def test_seed_agreement_is_the_mean_pairwise_correlation_of_ranks():
    import numpy as np

    vectors = [[1, 2, 3, 4], [2, 2, 3, 5], [4, 3, 2, 1], [3, 3, 3, 3]]  # the constant vector has no correlation
    pairs = [np.corrcoef(a, b)[0, 1] for i, a in enumerate(vectors[:3]) for b in vectors[i + 1:3]]
    assert autolora_glue._agreement(vectors) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert autolora_glue._agreement([[1, 2], [3, 3]]) is None
