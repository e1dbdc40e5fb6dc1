"""Replaying random state so that all passes of one hypergradient see the same dropout masks.

A hypergradient combines several forward passes (the two finite-difference passes, the passes of an unroll).
With fresh dropout masks per pass, the difference of two passes measures mask noise instead of curvature; measured
on a transformer this inflates the spread of the finite-difference term to about 3x its own size. The rule of this
library: every pass of one level inside one hypergradient starts from the same random state. Each level gets its own
seed, drawn once per hypergradient from the global generator, so the global stream still advances deterministically.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from .autodiff.compiled import LIBRARY_WRAPPER


def _cuda_devices() -> list[int]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


class RngReplay:
    """A seed drawn once; each ``with replay():`` block runs from that seed and leaves the global state untouched."""

    def __init__(self) -> None:
        self.seed = int(torch.randint(0, 2**62, (1,)).item())
        self.devices = _cuda_devices()

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            # the generators themselves: torch.manual_seed also visits every backend and costs ~100x more
            torch.default_generator.manual_seed(self.seed)
            for device in self.devices:
                torch.cuda.default_generators[device].manual_seed(self.seed)
            yield


def with_replayed_rng(loss: Callable, replay: RngReplay) -> Callable:
    """``loss`` wrapped so that every call starts from ``replay``'s random state."""

    def replayed(*args, **kwargs):
        with replay():
            return loss(*args, **kwargs)

    setattr(replayed, LIBRARY_WRAPPER, loss)  # compiled passes see through it (they replay no random state)
    return replayed
