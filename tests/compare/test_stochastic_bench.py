"""bench/stochastic.py: the generated quadratic's x* is the closed form, the counts per row are what the methods
cost, and the benchmark can tell a biased method (the one-step finite difference) from the tracked implicit one."""
import pytest
import torch

import bilevel
from bench import stochastic


def test_the_quadratic_closed_form_optimum_makes_the_full_data_hypergradient_vanish():
    problem = stochastic.quadratic(n=6, m=3, samples=50)
    c, t = problem["inner_data"][0], problem["outer_data"][0]
    inner = lambda w, x, batch: problem["inner_loss"](w, x, (c,))  # noqa: E731
    outer = lambda w, x, batch: problem["outer_loss"](w, x, (t,))  # noqa: E731

    def hypergradient_at(x):
        zero = torch.zeros(6, dtype=torch.float64)
        hessian = torch.autograd.functional.hessian(lambda w: inner({"w": w}, {"x": x}, None), zero)
        slope = torch.func.grad(lambda w: inner({"w": w}, {"x": x}, None))(zero)
        w_star = -torch.linalg.solve(hessian, slope)  # the inner loss is quadratic in w
        return bilevel.hypergradient(inner, outer, {"w": w_star}, {"x": x}, None, None, "exact")["x"]

    assert problem["figure"](problem["inner"], problem["outer"])["rel_error"] == 1.0  # x starts at zero
    start = hypergradient_at(torch.zeros(3, dtype=torch.float64)).norm()
    assert hypergradient_at(problem["x_star"]).norm() <= 1e-12 * start


@pytest.mark.parametrize("row, passes, products", [("soba", 3, 1), ("soba_fd", 4, 0), ("f2sa", 6, 0),
                                                   ("amigo", 3, 11), ("finite_difference", 5, 0)])
def test_counts_per_outer_step(row, passes, products):
    result = stochastic.run_row(stochastic.quadratic(n=8, m=2, samples=64), stochastic.ROWS[row], steps=3,
                                batch_size=16)
    assert result["passes"] == passes and result["hvp"] == products


def test_the_benchmark_tells_the_biased_method_from_the_tracked_implicit_one():
    problem = stochastic.quadratic(n=20, m=4, samples=256)
    errors = {row: stochastic.run_row(problem, stochastic.ROWS[row], steps=300, batch_size=64)["rel_error"]
              for row in ("soba", "finite_difference")}
    assert errors["soba"] < 0.1 < errors["finite_difference"], errors


def test_the_batch_sampler_loader_draws_the_batches_of_a_shuffling_dataloader():
    """docs/engine.md's advice for tensor data: the same batches as ``shuffle=True``, without per-row collation."""
    from torch.utils.data import DataLoader, TensorDataset

    rows, labels = torch.randn(200, 3), torch.arange(200)
    torch.manual_seed(0)
    expected = list(DataLoader(TensorDataset(rows, labels), batch_size=64, shuffle=True))
    torch.manual_seed(0)
    got = list(stochastic.loader(rows, labels, batch_size=64))
    assert [len(b[1]) for b in got] == [64, 64, 64, 8]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(expected, got, strict=True))
