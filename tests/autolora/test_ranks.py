import json

import pytest
import torch

from autolora.config import AutoLoraConfig
from autolora.injection import gated_layers, inject_gated_lora
from autolora.ranks import RankResult, compute_ranks, load_ranks, save_ranks, select_components
from tiny_models import tiny_model


def test_keeps_components_at_or_above_threshold():
    assert select_components([0.4, 0.1, 0.25, 0.25], 0.25) == [0, 2, 3]


def test_uniform_weights_keep_everything_at_default_threshold():
    k = 8
    assert select_components(torch.softmax(torch.zeros(k), 0), 1 / k) == list(range(k))


def test_min_rank_one_keeps_the_strongest():
    assert select_components([0.3, 0.45, 0.25], 0.5) == [1]


def test_zero_rank_when_allowed():
    assert select_components([0.3, 0.45, 0.25], 0.5, allow_zero_rank=True) == []


def test_threshold_one_needs_a_one_hot():
    assert select_components([0.0, 1.0], 1.0, allow_zero_rank=True) == [1]


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_bad_threshold(bad):
    with pytest.raises(ValueError, match="threshold"):
        select_components([0.5, 0.5], bad)
    with pytest.raises(ValueError, match="AutoLoraConfig: threshold"):
        AutoLoraConfig(threshold=bad)


def test_compute_and_round_trip(tmp_path):
    model = tiny_model("bert")
    inject_gated_lora(model, AutoLoraConfig(k=4))
    layers = list(gated_layers(model).values())
    with torch.no_grad():
        layers[0].lora_logits.copy_(torch.tensor([3.0, 3.0, -5.0, -5.0]))   # two strong components
        layers[1].lora_logits.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))     # one
    result = compute_ranks(model, threshold=0.25)
    assert list(result.ranks.values()) == [2, 1, 4, 4]
    assert result.kept[next(iter(result.kept))] == [0, 1]
    path = tmp_path / "ranks.json"
    save_ranks(result, path)
    data = json.loads(path.read_text())
    assert data["k"] == 4 and data["threshold"] == 0.25 and len(data["weights"]) == 4
    assert load_ranks(path) == result
    assert not [p for p in tmp_path.iterdir() if p.name != "ranks.json"]  # no temp files left


def test_bad_ranks_file(tmp_path):
    path = tmp_path / "ranks.json"
    path.write_text(json.dumps({"k": 2, "threshold": 0.5, "ranks": {"a": 3}}))
    with pytest.raises(ValueError, match=r"ranks.json: ranks must be integers in \[0, k=2\]"):
        load_ranks(path)
    with pytest.raises(FileNotFoundError, match="autolora search"):
        load_ranks(tmp_path / "missing.json")
    assert RankResult.from_dict({"k": 2, "threshold": 0.5, "ranks": {"a": 0}}).total_rank == 0
