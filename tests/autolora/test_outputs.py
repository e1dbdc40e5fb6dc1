"""Outputs written atomically get the modes the umask gives a plain open/mkdir (0644 and 0755 under umask 022), not
the private 0600/0700 of their temporary files, so others on a shared machine can read the adapter."""
import contextlib
import os
import stat
import tempfile

import pytest

from autolora.cli import main
from autolora.outputs import atomic_directory, write_json_atomic
from test_cli import common, tiny_dir  # noqa: F401  (tiny_dir is a fixture)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                           (0o002, 0o664, 0o775)])
def test_atomic_outputs_follow_the_umask(tmp_path, mask, file_mode, folder_mode):
    with umask(mask):
        write_json_atomic(tmp_path / "ranks.json", {"k": 4})
        with atomic_directory(tmp_path / "adapter") as folder:
            handle, _ = tempfile.mkstemp(dir=folder)   # a writer that makes its files private, as safetensors does
            os.close(handle)
            os.makedirs(os.path.join(folder, "nested"))
    assert mode(tmp_path / "ranks.json") == file_mode
    assert mode(tmp_path / "adapter") == mode(tmp_path / "adapter" / "nested") == folder_mode
    assert {mode(p) for p in (tmp_path / "adapter").iterdir() if p.is_file()} == {file_mode}


def test_every_output_of_a_run_is_readable_by_others_under_umask_022(tiny_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    with umask(0o022):
        assert main(["run", *common(tiny_dir, out), "--search-max-steps", "2", "--search-batch-size", "8",
                     "--retrain-max-steps", "2", "--retrain-batch-size", "8", "--merge"]) == 0
    modes = {str(path.relative_to(out)): mode(path) for path in out.rglob("*")}
    assert {"adapter/adapter_model.safetensors", "ranks.json", "metrics.json", "report.html",
            "merged/model.safetensors"} <= set(modes)
    wrong = {name: oct(m) for name, m in modes.items() if m != (0o755 if (out / name).is_dir() else 0o644)}
    assert not wrong and mode(out) == 0o755
