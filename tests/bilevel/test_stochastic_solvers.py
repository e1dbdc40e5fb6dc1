"""SOBA, AmIGO and F2SA driven by the Engine against closed forms on the quadratic bilevel problem (float64):
deterministic runs reach x*, minibatch runs settle on a noise floor proportional to the noise, F2SA's penalty
hypergradient is O(1/multiplier) from the implicit one, and SOBA's finite-difference products need no double
backward."""
import re

import pytest
import torch

import bilevel
from bilevel.methods import F2SA, SOBA, AmIGO
from problems import DT, LogCosh, Quadratic, hypergradient, relative_error
from tests.bilevel.stochastic_quadratic import outer_value, quadratic_engine

PROBLEM = Quadratic(rho=0.5)  # the problem quadratic_engine builds by default
X_STAR = PROBLEM.outer_optimum()


def run(engine):
    """Outer values after every outer step of ``engine.run()``."""
    path = []
    engine.on_step = lambda engine, step: path.append(outer_value(engine))
    engine.run()
    return path


# Deterministic: 300 outer steps from x = 0 (relative error 1) to within 1e-6 of x*. F2SA's answer is O(1/lambda)
# from x* (0.27 / lambda relative here), so it runs with lambda = 1e6; its y steps match the inner steps.
DETERMINISTIC = {
    "soba": (SOBA(), 5),
    "soba_finite_difference": (SOBA(hessian="finite_difference"), 5),
    "amigo": (AmIGO(), 1),
    "amigo_cg": (AmIGO(solver="cg", iterations=2), 1),
    "f2sa": (F2SA(multiplier=1e6, steps=5), 5),
}


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_engine_reaches_the_outer_optimum(name):
    method, inner_steps = DETERMINISTIC[name]
    path = run(quadratic_engine(method, outer_steps=300, inner_steps=inner_steps))
    assert relative_error(torch.zeros_like(X_STAR), X_STAR) == 1.0
    assert relative_error(path[-1], X_STAR) <= 1e-6, relative_error(path[-1], X_STAR)



def test_f2sa_in_the_engine_starts_y_at_z_before_the_first_inner_step_and_steps_both_in_lockstep():
    """Algorithm 1's first iteration: y_0 = z_0, then z takes its inner step and y its step on f + lambda g from the
    same point, so y_1 - z_1 = -(lr / lambda) grad_w f(z_0) exactly (y_step="lr/multiplier", SGD at lr)."""
    multiplier, lr = 50.0, 0.1
    engine = quadratic_engine(F2SA(multiplier=multiplier, lr=lr), outer_steps=1, inner_steps=1, inner_lr=lr)
    z0, x0 = PROBLEM.w0.clone(), torch.zeros(PROBLEM.B.shape[1], dtype=DT)
    engine.run()
    y1 = PROBLEM.flat(engine.method_state["y"])
    z1 = z0 - lr * PROBLEM.inner_grad(z0, x0, None)
    assert relative_error(PROBLEM.flat(engine.inner.params).detach(), z1) <= 1e-14
    assert relative_error(y1 - z1, -lr / multiplier * PROBLEM.outer_grad_w(z0, x0)) <= 1e-12


def test_f2sa_keeps_y_and_z_in_lockstep_when_the_engine_reuses_the_inner_gradient_order():
    """With reuse_inner_gradient=True the Engine calls the method before z's inner step: y must not step on that
    first call (it would run a round ahead of z, and lambda times the offset would enter h), and the run reaches x*
    as in the default order."""
    engine = quadratic_engine(F2SA(multiplier=50.0, lr=0.1), outer_steps=1, inner_steps=1, inner_lr=0.1,
                              reuse_inner_gradient=True)
    engine.run()
    assert torch.equal(PROBLEM.flat(engine.method_state["y"]), PROBLEM.w0)  # y_1 = y_0 = z_0: no step yet
    assert engine.last_result.diagnostics["gradient_evaluations"] == 3  # h's three passes only
    path = run(quadratic_engine(F2SA(multiplier=1e6, steps=5), outer_steps=300, inner_steps=5,
                                reuse_inner_gradient=True))
    assert relative_error(path[-1], X_STAR) <= 1e-6, relative_error(path[-1], X_STAR)

def penalty_solution(problem, x, multiplier):
    """y*_lambda(x) = argmin_y f(x, y) + lambda g(x, y) = (I + lambda A)^-1 (t + lambda (B x - c))."""
    n = problem.A.shape[0]
    return torch.linalg.solve(torch.eye(n, dtype=DT) + multiplier * problem.A,
                              problem.t + multiplier * (problem.B @ x - problem.c))


def penalty_optimum(problem, multiplier):
    """Where grad L*_lambda(x) = rho x - lambda B^T (y*_lambda(x) - w*(x)) vanishes (it is affine in x)."""
    def gradient(x):
        response = penalty_solution(problem, x, multiplier) - problem.w_star(x)
        return problem.rho * x - multiplier * problem.B.T @ response

    zero = torch.zeros(problem.B.shape[1], dtype=DT)
    jacobian = torch.stack([gradient(e) - gradient(zero) for e in torch.eye(len(zero), dtype=DT)], 1)
    return torch.linalg.solve(jacobian, -gradient(zero))


def test_f2sa_with_a_fixed_multiplier_converges_to_the_penalty_optimum_order_one_over_lambda_from_x_star():
    path = run(quadratic_engine(F2SA(multiplier=100.0, steps=5), outer_steps=300, inner_steps=5))
    optimum = penalty_optimum(PROBLEM, 100.0)
    assert relative_error(path[-1], optimum) <= 1e-10
    far, near = relative_error(optimum, X_STAR), relative_error(penalty_optimum(PROBLEM, 1000.0), X_STAR)
    assert 2e-3 < far < 4e-3 and 9.5 < far / near < 10.5  # O(1/lambda)


@pytest.mark.parametrize("problem", [Quadratic(), Quadratic(n=6, m=2, seed=3, eig=(0.5, 3.0))], ids=["4x3", "6x2"])
def test_f2sa_penalty_hypergradient_is_order_one_over_lambda_from_the_implicit_one(problem):
    """At y = y*_lambda(x), z = w*(x) the y steps stay put and F2SA returns grad L*_lambda(x) (checked by hand); its
    distance to the implicit hypergradient shrinks tenfold when lambda grows tenfold."""
    x, w = problem.x0, problem.w_star(problem.x0)
    errors = []
    for multiplier in (100.0, 1000.0):
        y = penalty_solution(problem, x, multiplier)
        method = F2SA(lr=0.1, multiplier=multiplier)
        state = {"y": problem.inner_params(y), "calls": 0, "multiplier": multiplier}
        value = hypergradient(problem, method, w, x, state=state)
        by_hand = problem.rho * x - multiplier * problem.B.T @ (y - w)
        assert relative_error(value, by_hand) <= 1e-9
        errors.append(relative_error(value, problem.closed_form(x)))
    assert errors[0] < 0.1 and 9.5 < errors[0] / errors[1] < 10.5, errors


# Minibatches: a centred table of noise vectors, added linearly to both losses (see stochastic_quadratic). These
# methods are linear maps of the noise on a quadratic, so with the same batch order the deviation from the
# noiseless path is exactly proportional to the noise scale; with constant steps it settles on a floor. (F2SA at
# lambda = 1e3: at 1e6 the rounding of y - z, amplified by lambda, is 1e-7 of the deviation.)
STOCHASTIC = {"soba": (SOBA(), 1), "amigo": (AmIGO(), 1), "f2sa": (F2SA(multiplier=1e3), 1)}


def floor(deviations):
    return float(torch.stack([d.norm() for d in deviations]).pow(2).mean().sqrt() / X_STAR.norm())


@pytest.mark.parametrize("name", STOCHASTIC)
def test_minibatch_runs_settle_on_a_noise_floor_proportional_to_the_noise(name):
    method, inner_steps = STOCHASTIC[name]
    paths = {noise: run(quadratic_engine(method, outer_steps=400, inner_steps=inner_steps, noise=noise))
             for noise in (0.0, 0.01, 0.1)}
    assert relative_error(paths[0.0][-1], X_STAR) <= 1e-3  # noiseless: SOBA 8.8e-5 after 400 steps, F2SA 2.7e-4
    deviation = {noise: [a - b for a, b in zip(paths[noise], paths[0.0])] for noise in (0.01, 0.1)}
    floors = {noise: floor(deviation[noise][200:]) for noise in deviation}
    assert floors[0.1] / floors[0.01] == pytest.approx(10.0, rel=1e-9)
    assert 1e-3 < floors[0.1] < 0.5  # a floor, well below the start (relative error 1)
    third, fourth = floor(deviation[0.1][200:300]), floor(deviation[0.1][300:])
    assert 2 / 3 < third / fourth < 3 / 2  # settled, not still shrinking
    assert relative_error(paths[0.1][-1], X_STAR) < 0.5


def test_soba_finite_difference_products_equal_the_exact_ones_on_a_quadratic_and_approximate_them_otherwise():
    for problem, tolerance in ((Quadratic(), 1e-9), (LogCosh(), 1e-4)):
        v = torch.randn(problem.w0.numel(), generator=torch.Generator().manual_seed(5), dtype=DT)
        state = {"v": problem.inner_params(v), "calls": 0}
        values = {}
        for hessian in ("exact", "finite_difference"):
            values[hessian], result = hypergradient(problem, SOBA(step=0.1, hessian=hessian), problem.w0, problem.x0,
                                                    state=state, return_result=True)
            values[hessian + "_v"] = problem.flat(result.state["v"])
        assert relative_error(values["finite_difference"], values["exact"]) <= tolerance
        assert relative_error(values["finite_difference_v"], values["exact_v"]) <= tolerance


class CubeOnce(torch.autograd.Function):
    """x^3 with a backward that refuses to build a graph of itself (like fused attention kernels)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph=True: the caller wants to differentiate this backward
            raise RuntimeError("derivative for CubeOnce's backward is not implemented")
        (x,) = ctx.saved_tensors
        return 3 * x ** 2 * grad


def test_soba_finite_difference_runs_where_double_backward_does_not():
    def inner_loss(inner, outer, batch):
        w = inner["w"]
        return 0.5 * (w ** 2).sum() + 0.1 * CubeOnce.apply(w).sum() - w @ outer["x"]

    def outer_loss(inner, outer, batch):
        return 0.5 * ((inner["w"] - 1) ** 2).sum()

    inner, outer = {"w": torch.tensor([0.3, -0.2], dtype=DT)}, {"x": torch.tensor([0.5, 0.1], dtype=DT)}
    state = {"v": {"w": torch.tensor([0.2, 0.4], dtype=DT)}, "calls": 0}
    assert SOBA(hessian="exact").needs_second_derivatives
    assert not SOBA(hessian="finite_difference").needs_second_derivatives
    with pytest.raises(RuntimeError, match="method 'soba' needs second derivatives"):
        bilevel.hypergradient(inner_loss, outer_loss, inner, outer, None, None, SOBA(step=0.1), state=state)
    grads = bilevel.hypergradient(inner_loss, outer_loss, inner, outer, None, None,
                                  SOBA(step=0.1, hessian="finite_difference"), state=state)
    assert torch.allclose(grads["x"], -state["v"]["w"], rtol=0, atol=1e-15)  # d^2 g / dx dw = -I: D_x = -v


def test_soba_step_decays_as_t_to_the_minus_decay_and_moves_v_by_the_papers_rule():
    problem = Quadratic()
    w, x = problem.w0, problem.x0
    v = torch.randn(w.numel(), generator=torch.Generator().manual_seed(2), dtype=DT)
    _, result = hypergradient(problem, SOBA(step=0.2, decay=0.5), w, x, return_result=True,
                              state={"v": problem.inner_params(v), "calls": 3})
    rho = 0.2 * 4 ** -0.5  # the fourth call
    assert result.diagnostics["v_step"] == pytest.approx(rho, rel=1e-15) and result.state["calls"] == 4
    by_hand = v - rho * (problem.hessian(w, x, None) @ v + problem.outer_grad_w(w, x))
    assert relative_error(problem.flat(result.state["v"]), by_hand) <= 1e-14


def test_soba_reusing_its_inner_gradient_is_the_papers_order_at_three_passes_a_step():
    """With reuse_inner_gradient the Engine moves w, v and x from the same point (w_t, v_t, x_t), as the paper's
    SOBA does, and a step costs the outer pass, the inner pass with graph and one backward for both products."""
    rho, beta, steps = 0.2, 0.3, 6
    engine = quadratic_engine(SOBA(), outer_steps=steps, inner_lr=rho, outer_lr=beta, reuse_inner_gradient=True)
    engine.run()
    w, x, v = PROBLEM.w0.clone(), torch.zeros_like(X_STAR), torch.zeros_like(PROBLEM.w0)
    for _ in range(steps):
        w, v, x = (w - rho * PROBLEM.inner_grad(w, x, None),
                   v - rho * (PROBLEM.hessian(w, x, None) @ v + PROBLEM.outer_grad_w(w, x)),
                   x - beta * PROBLEM.soba(w, x, v))
    assert relative_error(outer_value(engine), x) <= 1e-13
    assert relative_error(PROBLEM.flat({k: p.detach() for k, p in engine.inner.stored_params.items()}), w) <= 1e-13
    assert relative_error(PROBLEM.flat(engine.method_state["v"]), v) <= 1e-13
    diagnostics = engine.last_result.diagnostics
    assert diagnostics["gradient_evaluations"] == 2 and diagnostics["hvp"] == 1  # no separate inner step pass
    assert engine.last_result.inner_grads is not None


def test_gradient_descent_solver_from_zero_is_the_neumann_series_and_from_a_start_contracts():
    matrix = torch.tensor([[3.0, 0.5], [0.5, 1.0]], dtype=DT)
    b = {"q": torch.tensor([1.0, -2.0], dtype=DT)}
    matvec = lambda q: {"q": matrix @ q["q"]}  # noqa: E731
    from_zero, info = bilevel.solvers.GradientDescentSolver(iterations=7, step=0.2)(matvec, b)
    neumann, _ = bilevel.solvers.NeumannSolver(iterations=6, step=0.2)(matvec, b)  # 7 terms, i = 0..6
    assert torch.allclose(from_zero["q"], neumann["q"], rtol=1e-14, atol=0) and info.matvecs == 7
    exact = torch.linalg.solve(matrix, b["q"])
    start = {"q": exact + torch.tensor([0.3, 0.1], dtype=DT)}
    moved, _ = bilevel.solvers.GradientDescentSolver(iterations=1, step=0.2)(matvec, b, start)
    contraction = torch.eye(2, dtype=DT) - 0.2 * matrix
    assert torch.allclose(moved["q"] - exact, contraction @ (start["q"] - exact), rtol=1e-13, atol=1e-15)
    with pytest.raises(bilevel.solvers.SolverDivergedError, match="smaller step"):
        bilevel.solvers.GradientDescentSolver(iterations=30, step=1.0)(matvec, b)


@pytest.mark.parametrize("y_step, advice", [("lr/multiplier", ", or a larger multiplier"), ("lr", "")])
def test_f2sa_whose_y_steps_diverge_says_so_instead_of_running_on(y_step, advice):
    """f's curvature (50) far above lambda times g's (1): the y step 0.5 (lr / lambda, or lr: lambda = 1) times the
    curvature of f + lambda g (51) is 25.5 > 2, so y grows about 24.5-fold per step while z is stable. A larger
    multiplier helps only where it divides the step."""
    def inner_loss(w, x, batch):
        return 0.5 * (w["w"] ** 2).sum()

    def outer_loss(w, x, batch):
        return 25.0 * ((w["w"] - x["x"]) ** 2).sum()

    w, x = {"w": torch.ones(3, dtype=torch.float64)}, {"x": torch.zeros(3, dtype=torch.float64)}
    method, state = F2SA(lr=0.5, multiplier=1.0, y_step=y_step), None
    with pytest.raises(bilevel.solvers.SolverDivergedError,
                       match=r"^F2SA: the second inner copy y diverged at call \d+ \(\|y - z\| = .*\): its step 0.5 "
                             r"is too large for the curvature of f \+ 1 g; pass a smaller lr, e.g. lr=0.125"
                             + re.escape(advice) + "$"):
        for _ in range(20):
            result = bilevel.hypergradient(inner_loss, outer_loss, w, x, None, None, method, state=state,
                                           return_result=True)
            state = result.state
    # y steps that overflow its own losses to inf within one call (float32, 8 steps of 20) are still a divergence,
    # not a non-finite loss: the losses at the y the call started from were finite
    w32, x32 = {"w": torch.ones(3)}, {"x": torch.zeros(3)}
    with pytest.raises(bilevel.solvers.SolverDivergedError, match=r"^F2SA: the second inner copy y diverged at call 1"):
        bilevel.hypergradient(inner_loss, outer_loss, w32, x32, None, None, F2SA(lr=20.0, multiplier=1.0, steps=8,
                                                                                 y_step=y_step))
