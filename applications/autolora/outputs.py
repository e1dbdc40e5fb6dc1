"""Writing outputs so that a crash never leaves a half-written file: write a temporary sibling, then rename.

``os.replace`` is atomic on one filesystem, so readers see either the old file or the complete new one.
Temporary files and folders are private (``mkstemp``: 0600, ``mkdtemp``: 0700); before the rename they get the
mode a plain ``open``/``mkdir`` would have given (0644 and 0755 under umask 022), so whoever may read the output
folder can read the outputs.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

from bilevel.checkpoint import atomic_open, current_umask

__all__ = ["write_json_atomic", "write_bytes_atomic", "atomic_directory", "check_output_dir",
           "prepare_output_dir"]


def _give_default_modes(folder: str) -> None:
    """The modes under the umask for ``folder`` and everything in it (some writers, safetensors among them, create
    their files 0600)."""
    mask = current_umask()
    for root, _, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    with atomic_open(path) as file:  # created with the mode the umask gives
        file.write(data)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary directory next to ``path``; on success it replaces ``path`` (an old one is removed)."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    try:
        yield tmp
        _give_default_modes(tmp)
        if os.path.exists(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> str:
    """Refuse a file, or an existing non-empty directory unless ``overwrite``; writes nothing."""
    path = os.fspath(path)
    if os.path.isfile(path):
        raise FileExistsError(f"--output-dir {path!r} is a file; pass a directory")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(f"--output-dir {path!r} is not empty; pass --overwrite or choose another directory")
    return path


def prepare_output_dir(path: str | os.PathLike, overwrite: bool = False) -> str:
    """Create ``path`` after `check_output_dir`."""
    path = check_output_dir(path, overwrite)
    os.makedirs(path, exist_ok=True)
    return path
