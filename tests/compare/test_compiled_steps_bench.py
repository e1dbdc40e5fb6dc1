"""bench/stochastic_peers/compiled_steps: the eager and compiled SOBA blocks and the compiled scan give their iterates,
and the table prints a row per block size and one for the scan (it checks the iterates itself). Skips as
test_benchopt_side_by_side does."""
import os
import shutil

import pytest

pytest.importorskip("jax")
pytest.importorskip("benchopt")
CHECKOUT = os.environ.get("BENCHMARK_BILEVEL", "/tmp/benchmark_bilevel")
if not os.path.isdir(os.path.join(CHECKOUT, "solvers")):
    pytest.skip(f"no benchmark_bilevel checkout at {CHECKOUT} (set BENCHMARK_BILEVEL)", allow_module_level=True)
if shutil.which("g++") is None and shutil.which("c++") is None:
    pytest.skip("torch.compile's inductor needs a C++ compiler", allow_module_level=True)


def test_compiled_blocks_give_their_iterates_and_a_row_each():
    from bench.stochastic_peers import compiled_steps

    text = compiled_steps.table(CHECKOUT, steps=20, block_sizes=[1, 4], epoch=10, repeats=1)
    rows = [line for line in text.splitlines() if line.startswith("| ours: torch.compile")]
    assert len(rows) == 4 and "4 steps per call" in rows[1] and "a scan over all 20 steps" in rows[2]
    assert "scalar code" in rows[3]
    for row in rows + [next(line for line in text.splitlines() if "the step alone" in line)]:
        difference = float(row.split("|")[5])
        assert difference < 1e-10
