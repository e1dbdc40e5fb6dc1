"""bench/planted_rank.py: the planted teacher, the recovery figures against independent references, and a tiny
end-to-end run (no data files needed: the base model is built from a config)."""
import json

import pytest
import torch

from bench import planted_rank


def test_planted_changes_have_the_planted_ranks_and_strength():
    base = planted_rank.load_base("small", 1)
    teacher, planted = planted_rank.plant(base, seed=3, strength=0.5)
    assert sorted(r for r in planted.values() if r) == list(planted_rank.PLANTED_RANKS)
    for name, rank in planted.items():
        before, after = base.get_submodule(name).weight.detach(), teacher.get_submodule(name).weight.detach()
        singular = torch.linalg.svdvals((after - before).double())
        top = torch.linalg.matrix_norm(before.double(), ord=2)
        assert int((singular > 1e-4 * top).sum()) == rank, name
        if rank:
            torch.testing.assert_close(singular[:rank], torch.full((rank,), 0.5 * float(top), dtype=torch.float64),
                                       rtol=1e-4, atol=0)


def test_auc_matches_scikit_learn_and_spearman_scipy():
    from sklearn.metrics import roc_auc_score

    planted = [0, 4, 0, 1, 0, 8, 2, 0]
    found = [1, 3, 0, 1, 2, 5, 2, 0]
    assert planted_rank.auc(planted, found) == pytest.approx(roc_auc_score([p > 0 for p in planted], found))
    assert planted_rank.auc(planted, planted) == 1.0


def test_placements_keep_the_total_rank():
    names = [f"m{i}" for i in range(12)]
    uniform = planted_rank.uniform_ranks(names, 15, seed=0)
    assert sum(uniform.values()) == 15 and set(uniform.values()) == {1, 2}
    ranks = dict(zip(names, [0, 0, 1, 4, 0, 0, 0, 0, 2, 8, 0, 0]))
    shuffled = planted_rank.shuffled(ranks, seed=1)
    assert sorted(shuffled.values()) == sorted(ranks.values()) and shuffled != ranks
    assert sum(planted_rank.random_ranks(names, 15, seed=2).values()) == 15


def test_a_tiny_run_writes_every_row_and_the_discrimination_check(tmp_path):
    args = ["--seeds", "0", "--layers", "1", "--train-rows", "64", "--eval-rows", "32", "--search-steps", "2",
            "--retrain-steps", "2", "--batch-size", "16", "--threads", "1", "--out", str(tmp_path)]
    assert planted_rank.main(args) == 0
    record = json.loads((tmp_path / "seed_0.json").read_text())
    rows = record["rows"]
    expected = {"oracle", "uniform", "random"} | {f"{s}_{r}{tail}" for s in planted_rank.SEARCHES
                                                  for r in planted_rank.RULES for tail in ("", "_shuffled")}
    assert set(rows) == expected
    total = sum(record["planted"].values())
    for label, row in rows.items():
        if "threshold" not in label:
            assert sum(row["ranks"]) == total, label       # every placement at the planted total rank
        if label.endswith("_shuffled"):
            assert sorted(row["ranks"]) == sorted(rows[label[:-len("_shuffled")]]["ranks"])
    table = (tmp_path / "table.md").read_text()
    assert "Discrimination check" in table and "| bilevel_budget_spectrum |" in table
    assert planted_rank.main(args) == 0                     # a rerun skips the finished seed
