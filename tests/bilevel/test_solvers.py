"""The linear solvers alone, against torch.linalg.solve on the matrix itself: no hypergradient in between."""
import pytest
import torch

from bilevel.solvers import ConjugateGradientSolver, DenseSolver, GradientDescentSolver, NeumannSolver, largest_eigenvalue

DT = torch.float64


def spd_system(n=12, low=0.5, high=8.0, seed=0):
    """A symmetric positive definite A with eigenvalues in [low, high], split over two parameter tensors."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=DT))
    a = q @ torch.diag(torch.linspace(low, high, n, dtype=DT)) @ q.T
    b = torch.randn(n, generator=generator, dtype=DT)
    split = n // 3

    def flat(params):
        return torch.cat([params["u"].reshape(-1), params["v"].reshape(-1)])

    def unflat(vector):
        return {"u": vector[:split], "v": vector[split:].reshape(-1, 1)}

    return a, b, (lambda params: unflat(a @ flat(params))), unflat(b), flat


@pytest.mark.parametrize("damping", [0.0, 0.7])
@pytest.mark.parametrize("solver", [lambda d: ConjugateGradientSolver(iterations=100, tol=1e-14, damping=d),
                                    lambda d: DenseSolver(damping=d)], ids=["cg", "dense"])
def test_solution_equals_torch_linalg_solve(solver, damping):
    a, b, matvec, rhs, flat = spd_system()
    solution, info = solver(damping)(matvec, rhs)
    expected = torch.linalg.solve(a + damping * torch.eye(len(b), dtype=DT), b)
    torch.testing.assert_close(flat(solution), expected, rtol=1e-12, atol=1e-13)
    assert info.converged and solution["v"].shape == rhs["v"].shape


def test_cg_on_n_distinct_eigenvalues_needs_at_most_n_iterations():
    """Exact arithmetic would need exactly n; three clusters are solved in three steps to rounding."""
    a, b, _, _, _ = spd_system()
    eigenvalues, vectors = torch.linalg.eigh(a)
    clustered = vectors @ torch.diag(torch.tensor([1.0, 3.0, 9.0], dtype=DT).repeat_interleave(4)) @ vectors.T
    solution, info = ConjugateGradientSolver(iterations=3, tol=1e-30)(lambda p: {"x": clustered @ p["x"]},
                                                                          {"x": b})
    torch.testing.assert_close(solution["x"], torch.linalg.solve(clustered, b), rtol=1e-10, atol=1e-12)
    assert info.iterations == 3


def test_cg_warm_start_from_the_solution_needs_no_iteration():
    a, b, matvec, rhs, flat = spd_system()
    exact = torch.linalg.solve(a, b)
    split = len(b) // 3
    solution, info = ConjugateGradientSolver(iterations=50, tol=1e-10)(
        matvec, rhs, {"u": exact[:split], "v": exact[split:].reshape(-1, 1)})
    assert info.iterations == 0
    torch.testing.assert_close(flat(solution), exact, rtol=1e-12, atol=1e-13)


def test_neumann_is_the_truncated_series_and_converges_to_the_solve():
    a, b, matvec, rhs, flat = spd_system(low=1.0, high=4.0)
    step, terms = 0.2, 30
    partial = sum(torch.linalg.matrix_power(torch.eye(len(b), dtype=DT) - step * a, i) for i in range(terms + 1))
    solution, _ = NeumannSolver(iterations=terms, step=step)(matvec, rhs)
    torch.testing.assert_close(flat(solution), step * partial @ b, rtol=1e-12, atol=1e-13)
    converged, info = NeumannSolver(iterations=400)(matvec, rhs)
    torch.testing.assert_close(flat(converged), torch.linalg.solve(a, b), rtol=1e-10, atol=1e-12)
    assert info.converged


@pytest.mark.parametrize("solver", [NeumannSolver(iterations=3), GradientDescentSolver(iterations=3, step=0.2)])
def test_a_truncated_solve_does_not_say_converged(solver):
    """``converged`` means the residual reached ``tol``, as for CG: three terms leave a residual of order one."""
    _, _, matvec, rhs, _ = spd_system(low=1.0, high=4.0)
    _, info = solver(matvec, rhs)
    assert 1e-3 < info.residual < 1.0 and not info.converged
    _, long = type(solver)(**{**vars(solver), "iterations": 600})(matvec, rhs)
    assert long.residual <= 1e-10 and long.converged


def test_power_iteration_finds_the_largest_eigenvalue():
    a, b, matvec, rhs, _ = spd_system(low=0.5, high=8.0)
    value, _ = largest_eigenvalue(matvec, rhs, iterations=200)
    assert value == pytest.approx(float(torch.linalg.eigvalsh(a)[-1]), rel=1e-8)
