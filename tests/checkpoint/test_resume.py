"""Kill a run with SIGKILL, resume it, and get bit for bit the result of a run that was never interrupted."""
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bilevel import checkpoint

SCRIPT = Path(__file__).with_name("resumable_run.py")


def run(*args, timeout=180):
    done = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    return done


def load_params(path):
    return torch.load(path)


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    done = run(folder / "ckpt", folder / "final.pt")
    assert done.returncode == 0, done.stderr[-2000:]
    return load_params(folder / "final.pt")


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, uninterrupted):
    ckpt = tmp_path / "ckpt"
    process = subprocess.Popen([sys.executable, str(SCRIPT), str(ckpt), str(tmp_path / "never.pt")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    step = 0
    while time.time() < deadline:
        state = checkpoint.load(ckpt / checkpoint.CHECKPOINT_NAME) if (ckpt / checkpoint.CHECKPOINT_NAME).exists() else None
        step = state["step"] if state else 0
        if step >= 4:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 4 <= step < 12, f"the run was not killed in the middle (step {step})"
    done = run(ckpt, tmp_path / "final.pt")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_bitwise_equal(load_params(tmp_path / "final.pt"), uninterrupted)


def test_kill_during_checkpoint_write_keeps_last_good_checkpoint(tmp_path, uninterrupted):
    ckpt = tmp_path / "ckpt"
    done = run(ckpt, tmp_path / "never.pt", "--kill-during-save-at", 6)
    assert done.returncode == -signal.SIGKILL
    state = checkpoint.load(ckpt / checkpoint.CHECKPOINT_NAME)
    assert state["step"] == 5  # the checkpoint of step 6 never replaced the one of step 5
    assert list(ckpt.glob("*.tmp")), "the interrupted write should have left only a temporary file"
    done = run(ckpt, tmp_path / "final.pt")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_bitwise_equal(load_params(tmp_path / "final.pt"), uninterrupted)


def test_corrupt_checkpoint_is_reported_not_replaced(tmp_path):
    path = tmp_path / checkpoint.CHECKPOINT_NAME
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read"):
        checkpoint.load(path)
    assert path.read_bytes() == b"not a checkpoint"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_an_atomic_write_gets_the_mode_the_umask_gives(tmp_path, umask, mode):
    """Checkpoints go through mkstemp (0600); others sharing the machine must read them as they read any file."""
    previous = os.umask(umask)
    try:
        path = checkpoint.save_atomic({"step": 1}, tmp_path / "run" / "checkpoint.pt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode
