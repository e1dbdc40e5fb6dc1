"""Keep freed memory inside the process (glibc), so eager steps on large parameters stop page-faulting.

Each eager PyTorch operation on a large parameter allocates a new result, and glibc's malloc hands blocks of that
size back to the operating system when they are freed (an ``mmap`` per block, or a trim of its heap). The next step
then page-faults its way through the same memory again: on the 100,100-parameter data-cleaning benchmark
(docs/stochastic.md, ``python -m bench.stochastic_peers.page_faults``) an AmIGO step through the Engine took
3,000-5,900 page faults and ran 17-31% slower than the same step written by hand, whose allocation order happened to
trim less. With both thresholds raised the faults are
gone and the two take the same time. The setting is process-wide, so it is an explicit opt-in (as LD_PRELOAD of
jemalloc or tcmalloc is, which PyTorch's CPU tuning guide suggests for the same reason).
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)  # glibc's ceiling: 32 MiB on 64-bit systems


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc's malloc to serve blocks up to 32 MiB (16 MiB on 32-bit systems) from its heap and to keep up to
    ``trim_threshold`` bytes of freed heap instead of returning them to the system. Both thresholds must be set:
    setting the trim threshold alone turns off glibc's adaptive mmap threshold and makes every block above 128 KiB an
    ``mmap`` of its own.

    Returns True when glibc took both settings; False where the C library has no ``mallopt`` (macOS, Windows, musl
    keep memory their own way) or refused one (the first may then have applied), so calling it is always safe. With
    another allocator preloaded (jemalloc, tcmalloc) it has no effect, and none is needed: they keep freed memory
    already. The cost: the process keeps its peak heap, as PyTorch's CUDA caching allocator does on GPUs.
    """
    if not isinstance(trim_threshold, int) or trim_threshold < MMAP_THRESHOLD_MAX:
        raise ValueError(f"keep_freed_memory: trim_threshold must be at least {MMAP_THRESHOLD_MAX} bytes (the "
                         f"largest block the heap then serves), got {trim_threshold!r}")
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                                                  min(trim_threshold, 2**31 - 1)))
