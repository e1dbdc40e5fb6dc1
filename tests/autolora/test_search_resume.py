"""A stopped AutoLoRA search resumes from its checkpoint to the very result of an uninterrupted search."""
import json

import pytest
import torch
from torch.utils.data import default_collate

from autolora.cli import main
from autolora.config import AutoLoraConfig, SearchConfig
from autolora.injection import upper_parameters
from autolora.search_checkpoint import search_with_checkpoints
from test_cli import common, tiny_dir  # noqa: F401  (tiny_dir is a fixture)
from tiny_models import tiny_batch, tiny_model

ROWS = [{k: v[0] for k, v in tiny_batch(batch_size=1, seed=s).items()} for s in range(24)]
SETTINGS = dict(max_steps=10, batch_size=4, record_every=2, alpha_learning_rate=0.1, checkpoint_every=3)


class Stop(Exception):
    pass


def run(checkpoint_dir=None, stop_at=None, resume=False):
    model = tiny_model("bert")  # dropout on: the resumed run must also replay the random state

    def on_step(engine, step):
        if step == stop_at:
            raise Stop

    result = search_with_checkpoints(model, ROWS, default_collate, AutoLoraConfig(k=4), SearchConfig(**SETTINGS), progress=False,
                    on_step=on_step, checkpoint_dir=checkpoint_dir, resume=resume)
    return result, {n: p.detach().clone() for n, p in upper_parameters(model).items()}


def test_resumed_search_equals_the_uninterrupted_one_bit_for_bit(tmp_path):
    reference, reference_logits = run()
    # 17 lower rows in batches of 4: 5 batches per pass, so the checkpoint at step 6 lies in the second pass
    with pytest.raises(Stop):
        run(tmp_path, stop_at=8)
    resumed, resumed_logits = run(tmp_path, resume=True)
    for name, value in reference_logits.items():
        assert torch.equal(resumed_logits[name], value), name
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in reference_logits.values())
    assert resumed.ranks.ranks == reference.ranks.ranks
    assert resumed.trajectory.steps == reference.trajectory.steps == [0, 2, 4, 6, 8, 10]
    assert resumed.trajectory.weights == reference.trajectory.weights
    assert resumed.losses == reference.losses


def test_resume_needs_a_checkpoint_and_the_same_settings(tmp_path):
    with pytest.raises(FileNotFoundError, match="no search checkpoint"):
        run(tmp_path / "empty", resume=True)
    with pytest.raises(Stop):
        run(tmp_path, stop_at=4)
    SETTINGS["batch_size"] = 6
    try:
        with pytest.raises(ValueError, match=r"other settings \(search.batch_size\)"):
            run(tmp_path, resume=True)
    finally:
        SETTINGS["batch_size"] = 4


def test_cli_checkpoints_and_resumes_into_a_directory_that_holds_results(tiny_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    args = ["search", *common(tiny_dir, out), "--search-max-steps", "4", "--search-batch-size", "8",
            "--checkpoint-every", "2", "--alpha-learning-rate", "0.1"]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "search_checkpoint").iterdir()) == ["checkpoint.pt", "settings.json",
                                                                             "trajectory.json"]
    first = json.loads((out / "ranks.json").read_text())
    assert main(args) == 1  # the directory holds results: refused without --resume
    assert main([*args, "--resume"]) == 0  # the finished search resumes at its last step and changes nothing
    assert json.loads((out / "ranks.json").read_text()) == first


def test_cli_resume_never_replaces_a_finished_adapter_without_overwrite(tiny_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    args = ["run", *common(tiny_dir, out), "--search-max-steps", "2", "--search-batch-size", "8",
            "--checkpoint-every", "1", "--retrain-max-steps", "2"]
    assert main(args) == 0
    metrics = (out / "metrics.json").read_text()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 1
    assert "already holds adapter/; pass --overwrite" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == metrics  # refused before anything was touched
