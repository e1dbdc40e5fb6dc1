"""Atomic checkpoint files and the random state that must travel with them."""
from __future__ import annotations

import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterator, Optional

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only once the block completes: written to a temporary file beside it,
    synced, then renamed over it. A process killed while writing leaves at most a stray temporary file, and
    ``path`` always holds the last complete version.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, 0o666 & ~current_umask())  # mkstemp's 0600 would hide the file from the owner's group
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def current_umask() -> int:
    """The process umask (reading it means setting it: the only portable way)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_atomic(state: Dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` with ``torch.save`` through :func:`atomic_open`."""
    with atomic_open(path) as file:
        torch.save(state, file)
    return Path(path)


def load(path: str | os.PathLike) -> Optional[Dict[str, Any]]:
    """The checkpoint at ``path``, or ``None`` when there is none."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a corrupt file is reported, never silently replaced
        raise RuntimeError(f"checkpoint: cannot read {path} ({error}); delete it to start over") from error


def rng_state() -> Dict[str, Any]:
    """Every generator a run draws from: torch (CPU and CUDA), NumPy and Python's ``random``."""
    state = {"torch": torch.random.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.random.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
