"""Hypergradient methods against closed forms: ridge regression (scalar and per-feature L2), a quadratic bilevel
problem, and the K-step SGD unroll recursion dw_{t+1}/dlambda = (I - eta A) dw_t/dlambda - eta diag(w_t)."""
import re

import pytest
import torch

from bilevel import StepBatches
from bilevel.methods import ConjugateGradient, Exact, Neumann, Unroll
from bilevel.solvers import SolverDivergedError
from problems import DT, Quadratic, Ridge, hypergradient, relative_error

CLOSED_FORM = [Ridge(per_feature=True), Ridge(per_feature=False), Quadratic()]
IDS = [p.name for p in CLOSED_FORM]


@pytest.mark.parametrize("problem", CLOSED_FORM, ids=IDS)
@pytest.mark.parametrize("method", [Exact(), ConjugateGradient(iterations=50, tol=1e-14)], ids=["exact", "cg"])
def test_exact_and_converged_cg_match_closed_form(problem, method):
    x = problem.x0
    value, result = hypergradient(problem, method, problem.w_star(x), x, return_result=True)
    assert relative_error(value, problem.closed_form(x)) < 1e-8
    assert result.diagnostics["residual"] < 1e-10


def test_ridge_reference_is_the_issue_formula():
    """The generic implicit reference of problems.py agrees with the issue's ridge formula (guards the fixtures)."""
    for problem in CLOSED_FORM:
        assert relative_error(problem.implicit(problem.x0), problem.closed_form(problem.x0)) < 1e-12


def _eigenvalue_range(problem):
    w = problem.w_star(problem.x0)
    eig = torch.linalg.eigvalsh(problem.hessian(w, problem.x0, problem.inner_batch))
    return float(eig[0]), float(eig[-1])


@pytest.mark.parametrize("problem", [Ridge(per_feature=True), Quadratic(eig=(1.0, 5.0))], ids=["ridge", "quadratic"])
def test_neumann_automatic_step_converges_geometrically(problem):
    x = problem.x0
    w = problem.w_star(x)
    low, high = _eigenvalue_range(problem)
    rate = 1 - low / high
    block = 10
    residuals, errors = [], []
    for iterations in (10, 20, 30, 40, 60):
        value, result = hypergradient(problem, Neumann(iterations=iterations), w, x, return_result=True)
        residuals.append(result.diagnostics["residual"])
        errors.append(relative_error(value, problem.closed_form(x)))
    # residual (I - s H)^K b: per block of `block` terms it shrinks at least by the theoretical rate^block
    for before, after in zip(residuals[:4], residuals[1:4]):
        assert after <= before * rate ** block * (1 + 1e-9)
    assert errors[-1] < 1e-4
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))


def test_neumann_at_fixed_step_is_the_truncated_series():
    """Neumann(iterations=K, step=s) returns grad_x f - J^T s sum_{i<=K} (I - s H)^i grad_w f exactly (K products)."""
    problem = Quadratic()
    x, step, iterations = problem.x0, 0.1, 7
    w = problem.w_star(x)
    hess, series = problem.A, torch.zeros_like(problem.A)
    power = torch.eye(len(w), dtype=DT)
    for _ in range(iterations + 1):  # K products give the terms i = 0..K
        series, power = series + power, power @ (torch.eye(len(w), dtype=DT) - step * hess)
    expected = problem.outer_grad_x(w, x) - problem.mixed(w, x, None).T @ (step * series @ problem.outer_grad_w(w, x))
    value = hypergradient(problem, Neumann(iterations=iterations, step=step), w, x)
    assert relative_error(value, expected) < 1e-12


@pytest.mark.parametrize("damping", [0.5, 2.0])
@pytest.mark.parametrize("method", [ConjugateGradient, Exact], ids=["cg", "exact"])
def test_damping_solves_the_damped_system(method, damping):
    problem = Ridge(per_feature=True)
    x = problem.x0
    w = problem.w_star(x)
    hess = problem.hessian(w, x, problem.inner_batch) + damping * torch.eye(len(w), dtype=DT)
    expected = -problem.mixed(w, x, None).T @ torch.linalg.solve(hess, problem.outer_grad_w(w, x))
    settings = {"iterations": 50, "tol": 1e-14} if method is ConjugateGradient else {}
    value = hypergradient(problem, method(damping=damping, **settings), w, x)
    assert relative_error(value, expected) < 1e-10
    assert relative_error(value, problem.closed_form(x)) > 1e-2  # damping really changes the answer


def _saddle_problem():
    """g has an indefinite Hessian diag(2, -1, 3); grad_w f points mostly along the negative direction."""
    problem = Quadratic(n=3, m=2, split=False)
    problem.A = torch.diag(torch.tensor([2.0, -1.0, 3.0], dtype=DT))
    problem.t = problem.w_star(problem.x0) - torch.tensor([0.1, 1.0, 0.1], dtype=DT)
    return problem


def test_cg_warns_on_non_positive_curvature():
    problem = _saddle_problem()
    x = problem.x0
    with pytest.warns(RuntimeWarning, match=r"non-positive curvature.*not positive definite.*damping"):
        hypergradient(problem, ConjugateGradient(iterations=10), problem.w_star(x), x)


def test_cg_warns_once_per_call_site_not_once_per_step():
    import warnings

    problem = _saddle_problem()
    x = problem.x0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default action: once per message and location
        for _ in range(5):
            hypergradient(problem, ConjugateGradient(iterations=10), problem.w_star(x) + 0.01 * _, x)
    assert len([w for w in caught if "non-positive curvature" in str(w.message)]) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # and every one of the five calls did meet the curvature
        for _ in range(5):
            hypergradient(problem, ConjugateGradient(iterations=10), problem.w_star(x) + 0.01 * _, x)
    assert len([w for w in caught if "non-positive curvature" in str(w.message)]) == 5


def test_neumann_too_large_step_raises_suggesting_smaller_step():
    problem = Ridge(per_feature=True)
    x = problem.x0
    _, high = _eigenvalue_range(problem)
    with pytest.raises(SolverDivergedError, match="smaller step") as raised:
        hypergradient(problem, Neumann(iterations=60, step=3.0 / high), problem.w_star(x), x)
    suggested = float(re.search(r"e\.g\. step=([\d.e+-]+) \(1 / the largest Hessian eigenvalue", str(raised.value))[1])
    assert abs(suggested * high - 1) < 1e-2  # one try: 1 / lambda_max, inside the series' range (0, 2 / lambda_max)
    hypergradient(problem, Neumann(iterations=60, step=suggested), problem.w_star(x), x)


def test_neumann_on_an_indefinite_hessian_never_suggests_a_larger_step():
    problem = _saddle_problem()  # eigenvalues 2, -1, 3: no step makes the series converge
    x = problem.x0
    with pytest.raises(SolverDivergedError, match=r"e\.g\. step=0\.025; a series that diverges at small steps means "
                                                  r"the inner Hessian is not positive definite"):
        hypergradient(problem, Neumann(iterations=200, step=0.1), problem.w_star(x), x)


@pytest.mark.parametrize("problem", [Ridge(per_feature=True), Ridge(per_feature=False)], ids=["per_feature", "scalar"])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_unroll_matches_hand_coded_recursion(problem, steps):
    lr = 0.2
    value = hypergradient(problem, Unroll(steps=steps, lr=lr), problem.w0, problem.x0)
    expected = _ridge_recursion(problem, problem.w0, problem.x0, [problem.inner_batch] * steps, lr)
    assert relative_error(value, expected) < 1e-12


def test_unroll_with_one_batch_per_step_matches_recursion():
    problem = Ridge(per_feature=True)
    X, y = problem.inner_batch
    batches = [(X[i::3], y[i::3]) for i in range(3)]
    value = hypergradient(problem, Unroll(steps=3, lr=0.2), problem.w0, problem.x0, inner_batch=StepBatches(batches))
    expected = _ridge_recursion(problem, problem.w0, problem.x0, batches, 0.2)
    assert relative_error(value, expected) < 1e-12
    same_batch = _ridge_recursion(problem, problem.w0, problem.x0, [batches[0]] * 3, 0.2)
    assert relative_error(value, same_batch) > 1e-3


def _ridge_recursion(problem, w, lam, batches, lr):
    """SGD on ridge: w_{t+1} = w_t - eta (A_t w_t - X_t^T y_t / n_t), dw_{t+1}/dlambda = (I - eta A_t) dw_t - eta diag(w_t)."""
    lambdas = problem.lambdas(lam)
    dw = torch.zeros(len(w), len(w), dtype=DT)  # d w / d lambda_j for each feature's own lambda
    for X, y in batches:
        a = X.T @ X / len(y) + torch.diag(lambdas)
        dw = (torch.eye(len(w), dtype=DT) - lr * a) @ dw - lr * torch.diag(w)
        w = w - lr * (a @ w - X.T @ y / len(y))
    Xv, yv = problem.outer_batch
    per_feature = dw.T @ (Xv.T @ (Xv @ w - yv) / len(yv))
    return per_feature if problem.per_feature else per_feature.sum().reshape(1)


def test_long_unroll_from_optimum_approaches_implicit():
    """Started at w*, the K-step unroll with step eta is the K-term Neumann series with step eta: it tends to the
    implicit hypergradient as K grows, with error shrinking like (1 - eta lambda_min)^K."""
    problem = Ridge(per_feature=True)
    x = problem.x0
    w = problem.w_star(x)
    low, high = _eigenvalue_range(problem)
    lr = 1.0 / high
    errors = []
    for steps in (2, 20, 80):
        unrolled = hypergradient(problem, Unroll(steps=steps, lr=lr), w, x)
        # K unrolled steps sum the terms i < K, which a Neumann series builds from K - 1 products
        series = hypergradient(problem, Neumann(iterations=steps - 1, step=lr), w, x)
        assert relative_error(unrolled, series) < 1e-10
        errors.append(relative_error(unrolled, problem.closed_form(x)))
    assert errors[0] > 1e-2
    assert errors[1] < errors[0] and errors[2] < errors[1]
    assert errors[2] < 1e-6


@pytest.mark.parametrize("method", [ConjugateGradient(), Neumann(), Neumann(step=0.1), Exact()],
                         ids=["cg", "neumann", "neumann_fixed_step", "exact"])
def test_non_finite_outer_gradient_gives_a_non_finite_hypergradient(method):
    """A NaN in grad_w f must reach the result (for the Engine's check), not vanish into a zero solve; checked, the
    functional call names the outer loss rather than blaming the solver."""
    problem = Ridge(per_feature=True)
    X, y = problem.outer_batch
    y = y.clone()
    y[0] = float("nan")
    problem.outer_batch = (X, y)
    x = problem.x0
    value = hypergradient(problem, method, problem.w_star(x), x, check_finite=False)
    assert not torch.isfinite(value).all()
    with pytest.raises(FloatingPointError, match=r"^hypergradient: outer_loss is nan at the given parameters"):
        hypergradient(problem, method, problem.w_star(x), x)


def test_cg_warm_start_reuses_the_previous_solution():
    problem = Ridge(per_feature=True)
    x = problem.x0
    w = problem.w_star(x)
    method = ConjugateGradient(iterations=50, tol=1e-12, warm_start=True)
    cold, first = hypergradient(problem, method, w, x, return_result=True)
    warm, second = hypergradient(problem, method, w, x, return_result=True, state=first.state)
    assert first.diagnostics["iterations"] > 0 and second.diagnostics["iterations"] == 0
    assert relative_error(warm, problem.closed_form(x)) < 1e-10
    assert relative_error(cold, problem.closed_form(x)) < 1e-10
