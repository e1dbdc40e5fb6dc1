"""Peak memory of one call: the CUDA allocator's peak on GPUs, a count of live tensor bytes on CPU.

The CPU allocator keeps no peak statistic, and process RSS mixes in the allocator's caching and everything else in
the process. On CPU we therefore count, under a ``TorchDispatchMode``, the bytes of every tensor storage that an
operation creates during the call, and drop a storage from the count when it is freed (a weak reference to it
expires). The peak of that live sum is the call's transient tensor memory: activations and graphs saved for
backward, gradients, solver vectors. Inputs allocated before the call are not counted; neither is memory held
outside tensors (Python objects, allocator slack). On CUDA, ``max_memory_allocated`` minus the memory allocated
before the call measures the same quantity as the allocator sees it.
"""
from __future__ import annotations

from typing import Any, Callable, Tuple

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CPU_DESCRIPTION = "peak bytes of tensor storages created during the call and alive at the same time (CPU count)"
CUDA_DESCRIPTION = "torch.cuda.max_memory_allocated during the call minus the memory allocated before it"


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of storages created inside the mode that are still alive; ``peak`` is their maximum."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, Tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _release_dead(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._release_dead()
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if storage.nbytes() and key not in self.live:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def peak_memory(call: Callable[[], Any], device: torch.device | str) -> Tuple[int, str]:
    """Run ``call()`` once and return (peak extra bytes, a description of what was measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, CUDA_DESCRIPTION
    counter = LiveTensorBytes()
    with counter:
        call()
    return counter.peak, CPU_DESCRIPTION
