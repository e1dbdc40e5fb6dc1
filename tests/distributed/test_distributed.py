"""Two gloo processes under torchrun reproduce the single-process step on the concatenated batch."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("two_level_mlp.py")
spec = importlib.util.spec_from_file_location("two_level_mlp", WORKER)
two_level_mlp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(two_level_mlp)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("method", ["first_order", "finite_difference", "cg", "unroll", "soba_paper_order"])
def test_two_ranks_equal_one_process_on_the_whole_batch(method, tmp_path):
    out = tmp_path / "result.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(WORKER), method, str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    per_rank = torch.load(out)
    reference = two_level_mlp.run(method, *two_level_mlp.make_data())
    assert all(len(reference[f"history.{key}"]) == 2 for key in ("inner_loss", "outer_loss"))
    for result in per_rank:
        assert result.keys() == reference.keys()
        for name in reference:
            torch.testing.assert_close(result[name], reference[name], rtol=1e-6, atol=1e-9)
    # the outer update must be identical on every rank, bit for bit
    for name in per_rank[0]:
        assert torch.equal(per_rank[0][name], per_rank[1][name]), name
    # and the outer parameters must actually have moved, or the comparison proves nothing
    moved = [name for name in reference if name.startswith("log_decay") and not torch.equal(reference[name],
                                                                                          torch.tensor(-3.0, dtype=torch.float64))]
    assert moved


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ranks_that_disagree_on_stopping_all_stop_at_the_first_request(tmp_path):
    out = tmp_path / "result.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(WORKER), two_level_mlp.EARLY_STOP, str(out)]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = two_level_mlp.run("first_order", *two_level_mlp.make_data(), outer_steps=6,
                                  stop_at=min(two_level_mlp.EARLY_STOP_AT))
    assert len(reference["history.outer_loss"]) == 3
    for result in torch.load(out):
        for name in reference:
            torch.testing.assert_close(result[name], reference[name], rtol=1e-6, atol=1e-9)
