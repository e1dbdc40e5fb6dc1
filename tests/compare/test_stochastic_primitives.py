"""bench/stochastic_peers/primitives: the PyTorch and JAX primitives compute the same numbers, and the table prints."""
import pytest

pytest.importorskip("jax")


def test_primitives_agree_and_give_a_row_each():
    from bench.stochastic_peers import primitives

    out = primitives.table(repeats=1)  # checks the two sides' numbers agree before timing them
    for name in ("gradient", "hessian-vector product", primitives.COMPILED, primitives.COMPILED_GRADIENT,
                 primitives.MATRIX_PRODUCT):
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        ours, theirs, ratio = (cell.strip() for cell in row.split("|")[2:5])
        assert float(ours) > 0 and float(theirs) > 0 and ratio.endswith("x")
