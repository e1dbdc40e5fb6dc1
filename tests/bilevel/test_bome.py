"""BOME against hand-derived references (float64): one call is the paper's update, its multiplier makes q fall at
rate eta, and on the quadratic bilevel problem with closed-form x* a constant step stops O(step) from x* while the
decaying schedule keeps closing in; minibatch runs settle on a floor that grows with the noise."""
import pytest
import torch

import bilevel
from bilevel.methods import BOME
from problems import DT, LogCosh, Quadratic, hypergradient, relative_error
from tests.bilevel.stochastic_quadratic import outer_value, quadratic_engine

X_STAR = Quadratic(rho=0.5).outer_optimum()  # the problem quadratic_engine builds by default


def by_hand(problem, w, x, u, method, calls):
    """The paper's update at state (u, calls - 1) from the problem's hand derivatives: direction, new u, multiplier."""
    f_w, f_x = problem.outer_grad_w(u, x), problem.outer_grad_x(u, x)
    q_w = problem.inner_grad(u, x, problem.inner_batch)
    q_x = problem.inner_grad_x(u, x, problem.inner_batch) - problem.inner_grad_x(w, x, problem.inner_batch)
    squared = q_w @ q_w + q_x @ q_x
    multiplier = max(float(method.eta * squared - (f_w @ q_w + f_x @ q_x)), 0.0) / float(squared)
    shrink = min(1.0, method.decay_start / calls) ** (method.decay or 0.0)
    return shrink * (f_x + multiplier * q_x), u - method.step * shrink * (f_w + multiplier * q_w), multiplier


@pytest.mark.parametrize("problem", [Quadratic(), LogCosh()], ids=["quadratic", "logcosh"])
def test_one_call_is_the_papers_update_with_the_decayed_step(problem):
    w, x = problem.w0, problem.x0
    u = w + 0.3 * torch.randn(w.numel(), generator=torch.Generator().manual_seed(4), dtype=DT)
    method = BOME(step=0.05, eta=0.5, decay=0.5, decay_start=2)
    value, result = hypergradient(problem, method, w, x, return_result=True,
                                  state={"w": problem.inner_params(u), "calls": 4})
    direction, moved, multiplier = by_hand(problem, w, x, u, method, calls=5)
    assert result.state["calls"] == 5 and result.diagnostics["step_scale"] == pytest.approx((2 / 5) ** 0.5, rel=1e-15)
    assert result.diagnostics["multiplier"] == pytest.approx(multiplier, rel=1e-12) and multiplier > 0
    assert relative_error(value, direction) <= 1e-12
    assert relative_error(problem.flat(result.state["w"]), moved) <= 1e-12


def test_the_multiplier_makes_q_fall_at_least_at_rate_eta_and_is_zero_when_not_needed():
    """<grad q, d> >= eta ||grad q||^2, with equality when lambda > 0; lambda = 0 when grad f already lowers q enough,
    and where grad q = 0."""
    problem = Quadratic()
    w, x = problem.w0, problem.x0
    q = lambda u: torch.cat([problem.inner_grad(u, x, None), problem.inner_grad_x(u, x, None)  # noqa: E731
                             - problem.inner_grad_x(w, x, None)])
    f = lambda u: torch.cat([problem.outer_grad_w(u, x), problem.outer_grad_x(u, x)])  # noqa: E731
    generator = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(20):
        u = w + torch.randn(w.numel(), generator=generator, dtype=DT)
        method = BOME(step=0.05, eta=float(torch.rand(1, generator=generator, dtype=DT)) * 2)
        _, moved, multiplier = by_hand(problem, w, x, u, method, calls=1)
        direction = f(u) + multiplier * q(u)
        rate = direction @ q(u) / (q(u) @ q(u))
        assert rate >= method.eta - 1e-12 and (multiplier == 0 or rate == pytest.approx(method.eta, rel=1e-10))
        seen.add(multiplier == 0)
    assert seen == {True, False}  # both branches of the max were taken
    # where grad q = 0 exactly (u = w = w*(x) = 0 here), lambda = 0 and d = grad f: no division by zero
    g = lambda inner, outer, batch: 0.5 * inner["w"] @ inner["w"] + inner["w"] @ outer["x"]  # noqa: E731
    f = lambda inner, outer, batch: 0.5 * ((inner["w"] - 1) ** 2).sum() + 0.5 * ((outer["x"] - 1) ** 2).sum()  # noqa
    zero = {"w": torch.zeros(2, dtype=DT)}
    result = bilevel.hypergradient(g, f, zero, {"x": torch.zeros(2, dtype=DT)}, None, None, BOME(step=0.1),
                                   state={"w": zero, "calls": 0}, return_result=True)
    assert result.diagnostics["multiplier"] == 0.0 and torch.equal(result.grads["x"], -torch.ones(2, dtype=DT))


def test_the_first_call_starts_the_moving_copy_at_the_inner_parameters():
    problem = Quadratic()
    w, x = problem.w0, problem.x0
    method = BOME(step=0.05)
    value, result = hypergradient(problem, method, w, x, return_result=True)
    direction, moved, _ = by_hand(problem, w, x, w, method, calls=1)
    assert relative_error(value, direction) <= 1e-12 and result.state["calls"] == 1
    assert relative_error(problem.flat(result.state["w"]), moved) <= 1e-12


def relative_errors(method, outer_steps, **settings):
    """Relative error to x* after every outer step of an Engine run on the quadratic (SGD at 1/L on both levels)."""
    path = []
    engine = quadratic_engine(method, outer_steps=outer_steps, **settings)
    engine.on_step = lambda engine, step: path.append(relative_error(outer_value(engine), X_STAR))
    engine.run()
    return path


def test_a_constant_step_stops_order_step_from_x_star():
    """At q = 0, grad q = 0 too and no finite multiplier fits: with a constant step the iterates enter a cycle 0.13
    to 0.16 from x* (relative) and stay there."""
    path = relative_errors(BOME(), 250)
    assert relative_error(torch.zeros_like(X_STAR), X_STAR) == 1.0
    assert 0.1 < min(path[150:]) and max(path[150:]) < 0.2, (min(path[150:]), max(path[150:]))


def test_the_decaying_step_keeps_closing_in_on_x_star():
    """step_t = step min(1, 10 / t): 2.1e-2 after 100 steps, 7.1e-3 after 300 and 2.9e-3 after 1,000. The issue's
    1e-6 is out of a test's reach: a NumPy re-run of the recursion gives 1.8e-4 after 1e4 steps and 2.1e-6 after 1e6
    (roughly 1/t, see docs/methods.md)."""
    path = relative_errors(BOME(decay=1.0, decay_start=10), 1000)
    assert path[99] < 0.03 and path[299] < 0.01 and path[999] < 4e-3, (path[99], path[299], path[999])
    assert path[999] < path[99] / 5


def test_minibatch_runs_settle_on_a_floor_that_grows_with_the_noise():
    """Minibatch noise (a centred table added linearly to both losses, see stochastic_quadratic) with the decaying
    step: the mean relative error over steps 600-800 is 2.3e-2 at noise 0.01 and 9.7e-2 at noise 0.1 (noiseless:
    about 5e-3); the noise reaches x through lambda, which is not linear in it, so tenfold noise gives about four
    times the error."""
    floors = {}
    for noise in (0.01, 0.1):
        path = relative_errors(BOME(decay=1.0, decay_start=10), 800, noise=noise)
        floors[noise] = sum(path[600:]) / 200
        assert floors[noise] <= sum(path[200:400]) / 200  # still closing in, not drifting away
    assert 0.015 < floors[0.01] < 0.035 and 0.06 < floors[0.1] < 0.15, floors
    assert 3 < floors[0.1] / floors[0.01] < 6, floors


@pytest.mark.parametrize("field,value", [("step", 0.0), ("step", -0.1), ("eta", 0.0), ("eta", -1.0), ("eta", "big"),
                                         ("decay", 0.0), ("decay", 1.5), ("decay_start", 0), ("decay_start", 2.5)])
def test_bad_settings_get_one_line_errors_naming_the_setting(field, value):
    with pytest.raises(ValueError, match=f"BOME: {field} must be") as error:
        bilevel.methods.get("bome", **{field: value})
    assert "\n" not in str(error.value)


def test_a_direct_call_without_the_inner_step_says_how_to_give_it():
    problem = Quadratic()
    with pytest.raises(ValueError, match="method 'bome' .* needs step; pass inner_lr="):
        bilevel.hypergradient(problem.g, problem.f, problem.inner_params(problem.w0), problem.outer_params(problem.x0),
                              None, None, "bome")
