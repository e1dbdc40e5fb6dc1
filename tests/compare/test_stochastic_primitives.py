"""bench/stochastic_peers/primitives: the PyTorch and JAX primitives compute the same numbers, and the table prints."""
import pytest

pytest.importorskip("jax")


def test_primitives_agree_and_print_a_row_each(capsys):
    from bench.stochastic_peers import primitives

    primitives.main(["--repeats", "1"])
    out = capsys.readouterr().out
    for name in ("gradient", "hessian-vector product"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        ours, theirs, ratio = (cell.strip() for cell in row.split("|")[2:5])
        assert float(ours) > 0 and float(theirs) > 0 and ratio.endswith("x")
