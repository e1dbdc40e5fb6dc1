"""bilevel.keep_freed_memory: after it, a large block that is freed stays in the process (its resident memory does
not drop), ready for the next step's allocation; by default glibc hands it back to the system at once."""
import os
import subprocess
import sys

import pytest

import bilevel

PROGRAM = """
import os, sys, torch, bilevel
applied = bilevel.keep_freed_memory() if sys.argv[1] == "keep" else None
def resident():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
block = torch.ones(2 << 20, dtype=torch.float64)  # 16 MiB, every page written
before = resident()
del block
print(applied, before - resident())
"""
BLOCK = 16 << 20


def released(mode):
    """Bytes of resident memory the process gave back when the block was freed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults, whatever the shell
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True,
                         env=env).stdout
    applied, given_back = out.split()
    return applied, int(given_back)


@pytest.mark.skipif(sys.platform != "linux", reason="mallopt is glibc's, /proc/self/statm Linux's")
def test_a_freed_block_stays_in_the_process_after_keep_freed_memory():
    applied, given_back = released("keep")
    if applied != "True":
        pytest.skip("this C library has no mallopt (not glibc)")
    assert given_back < BLOCK // 10, given_back
    _, default = released("default")
    assert default >= BLOCK * 9 // 10, default  # glibc's default: the block goes back to the system when freed


def test_a_trim_threshold_below_the_largest_heap_block_is_refused():
    with pytest.raises(ValueError, match=r"^keep_freed_memory: trim_threshold must be at least \d+ bytes \(the "
                                         r"largest block the heap then serves\), got 0$"):
        bilevel.keep_freed_memory(0)
