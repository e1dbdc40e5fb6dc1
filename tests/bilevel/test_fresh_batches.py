"""Methods that sample a fresh batch per step of their own (AmIGO's linear-system steps, F2SA's y steps), as their
papers do: the functional API takes the batches as StepBatches and each step uses its own, checked against the
recursions by hand on ridge regression (whose Hessian depends on the batch); the Engine draws exactly the batches a
method asks for; F2SA's schedules (the paper's y step, a multiplier growing as a power) follow their formulas."""
import pytest
import torch

import bilevel
from bilevel import StepBatches
from bilevel.methods import F2SA, AmIGO
from problems import DT, Ridge, hypergradient, relative_error

PROBLEM = Ridge(per_feature=True)
X, Y = PROBLEM.inner_batch
XV, YV = PROBLEM.outer_batch


def inner_slices(count):
    return [(X[i::count], Y[i::count]) for i in range(count)]


def outer_slices(count):
    return [(XV[i::count], YV[i::count]) for i in range(count)]


def outer_grad_w(w, batch):
    features, targets = batch
    return features.T @ (features @ w - targets) / len(targets)


def test_amigo_with_fresh_batches_takes_each_linear_system_step_on_its_own_batch():
    w, x, step = PROBLEM.w0, PROBLEM.x0, 0.3
    q0 = torch.randn(len(w), generator=torch.Generator().manual_seed(4), dtype=DT)
    batches = inner_slices(4)  # three linear-system steps, then the mixed product's batch
    value, result = hypergradient(PROBLEM, AmIGO(iterations=3, step=step, fresh_batches=True), w, x,
                                  inner_batch=StepBatches(batches), state=PROBLEM.inner_params(q0), return_result=True)
    q = q0
    for batch in batches[:3]:
        q = q - step * (PROBLEM.hessian(w, x, batch) @ q - PROBLEM.outer_grad_w(w, x))
    assert relative_error(PROBLEM.flat(result.state), q) <= 1e-13
    assert relative_error(value, -PROBLEM.mixed(w, x, batches[3]).T @ q) <= 1e-13  # grad_x f = 0 for ridge
    assert result.diagnostics["gradient_evaluations"] == 5 and result.diagnostics["hvp"] == 4
    shared = hypergradient(PROBLEM, AmIGO(iterations=3, step=step), w, x, inner_batch=batches[0],
                           state=PROBLEM.inner_params(q0))
    assert relative_error(value, shared) > 1e-3  # the test can tell the batches apart


def test_amigo_fresh_batches_need_one_batch_per_step_and_gradient_descent():
    with pytest.raises(ValueError, match=r"^AmIGO: StepBatches holds 3 batches but it takes 4 \(3 linear-system "
                                         r"steps and the mixed product\); pass that many batches$"):
        hypergradient(PROBLEM, AmIGO(iterations=3, step=0.1, fresh_batches=True), PROBLEM.w0, PROBLEM.x0,
                      inner_batch=StepBatches(inner_slices(3)))
    with pytest.raises(ValueError, match="fresh_batches needs solver='gd'"):
        AmIGO(solver="cg", fresh_batches=True)


def test_f2sa_with_fresh_batches_takes_each_y_step_on_its_own_batches():
    w, x, lr, multiplier = PROBLEM.w0, PROBLEM.x0, 0.2, 3.0
    y0 = w + 0.1 * torch.randn(len(w), generator=torch.Generator().manual_seed(6), dtype=DT)
    inner, outer = inner_slices(3), outer_slices(3)
    state = {"y": PROBLEM.inner_params(y0), "calls": 2, "multiplier": multiplier}
    value, result = hypergradient(PROBLEM, F2SA(lr=lr, multiplier=1.0, steps=2, fresh_batches=True), w, x,
                                  inner_batch=StepBatches(inner), outer_batch=StepBatches(outer), state=state,
                                  return_result=True)
    y = y0
    for inner_batch, outer_batch in zip(inner[:2], outer[:2]):
        y = y - lr / multiplier * (outer_grad_w(y, outer_batch) + multiplier * PROBLEM.inner_grad(y, x, inner_batch))
    assert relative_error(PROBLEM.flat(result.state["y"]), y) <= 1e-13
    by_hand = multiplier * (PROBLEM.inner_grad_x(y, x, inner[2]) - PROBLEM.inner_grad_x(w, x, inner[2]))
    assert relative_error(value, by_hand) <= 1e-13
    shared = F2SA(lr=lr, multiplier=1.0, steps=2)
    _, same_batches = hypergradient(PROBLEM, shared, w, x, inner_batch=inner[0], outer_batch=outer[0], state=state,
                                    return_result=True)
    assert relative_error(PROBLEM.flat(same_batches.state["y"]), y) > 1e-3


def weighted_inner(w, x, batch):
    """g = 0.5 e^x mean((X w - y)^2) + 0.5 ||w||^2: unlike ridge, grad_x g depends on the batch."""
    features, targets = batch
    return 0.5 * torch.exp(x["x"]).sum() * ((features @ w["w"] - targets) ** 2).mean() + 0.5 * (w["w"] ** 2).sum()


def validation_mse(w, x, batch):
    features, targets = batch
    return 0.5 * ((features @ w["w"] - targets) ** 2).mean()


def test_f2sa_with_two_h_batches_takes_each_g_term_of_h_on_its_own_batch():
    """h_batches=2: y's steps as before, then grad_x g(x, y) on the next inner batch and grad_x g(x, z) on the last
    (checked by hand on a loss whose grad_x g depends on the batch)."""
    w, x, lr, multiplier = PROBLEM.w0, torch.tensor([0.3], dtype=DT), 0.2, 3.0
    y0 = w + 0.1 * torch.randn(len(w), generator=torch.Generator().manual_seed(6), dtype=DT)
    inner, outer = inner_slices(4), outer_slices(3)
    state = {"y": {"w": y0.clone()}, "calls": 2, "multiplier": multiplier}
    method = F2SA(lr=lr, multiplier=1.0, steps=2, fresh_batches=True, h_batches=2)
    assert method.batches_per_call() == (4, 3)
    result = bilevel.hypergradient(weighted_inner, validation_mse, {"w": w.clone()}, {"x": x.clone()},
                                   StepBatches(inner), StepBatches(outer), method, state=state, return_result=True)

    def grad_w_g(v, batch):
        features, targets = batch
        return torch.exp(x) * features.T @ (features @ v - targets) / len(targets) + v

    def grad_x_g(v, batch):
        features, targets = batch
        return 0.5 * torch.exp(x) * ((features @ v - targets) ** 2).mean()

    y = y0
    for inner_batch, outer_batch in zip(inner[:2], outer[:2]):
        y = y - lr / multiplier * (outer_grad_w(y, outer_batch) + multiplier * grad_w_g(y, inner_batch))
    assert relative_error(result.state["y"]["w"], y) <= 1e-13
    by_hand = multiplier * (grad_x_g(y, inner[2]) - grad_x_g(w, inner[3]))
    assert relative_error(result.grads["x"], by_hand) <= 1e-13
    one_batch = bilevel.hypergradient(weighted_inner, validation_mse, {"w": w.clone()}, {"x": x.clone()},
                                      StepBatches(inner[:3]), StepBatches(outer),
                                      F2SA(lr=lr, multiplier=1.0, steps=2, fresh_batches=True), state=state)
    assert relative_error(one_batch["x"], multiplier * (grad_x_g(y, inner[2]) - grad_x_g(w, inner[2]))) <= 1e-13
    assert relative_error(one_batch["x"], by_hand) > 1e-3  # the test can tell the batches apart
    with pytest.raises(ValueError, match=r"^F2SA: StepBatches holds 3 batches but it takes 4 \(inner: 2 y "
                                         r"steps and 2 for h\); pass that many batches$"):
        bilevel.hypergradient(weighted_inner, validation_mse, {"w": w.clone()}, {"x": x.clone()},
                              StepBatches(inner[:3]), StepBatches(outer), method, state=state)


def test_f2sa_h_batches_is_one_or_two_and_two_needs_fresh_batches():
    with pytest.raises(ValueError, match=r"^F2SA: h_batches must be 1 \(one inner batch for both g terms of h\) or "
                                         r"2 \(a batch each\), got 3$"):
        F2SA(h_batches=3)
    with pytest.raises(ValueError, match=r"^F2SA: h_batches=2 takes h's two inner batches fresh; pass "
                                         r"fresh_batches=True$"):
        F2SA(h_batches=2)


def test_f2sa_schedules_follow_the_papers_y_step_and_a_multiplier_grown_by_a_power():
    """lambda_{k+1} = lambda_k + growth (k+1)^-e and, with y_step="lr", alpha_k = lr (k+1)^-decay (not over lambda)."""
    method = F2SA(lr=0.01, multiplier=1.0, multiplier_growth=0.1, multiplier_growth_decay=1 / 7, decay=5 / 7,
                  y_step="lr", steps=1)
    state, multiplier = None, 1.0
    for k in range(4):
        _, result = hypergradient(PROBLEM, method, PROBLEM.w0, PROBLEM.x0, state=state, return_result=True)
        assert result.diagnostics["multiplier"] == pytest.approx(multiplier, rel=1e-15)
        assert result.diagnostics["y_step"] == pytest.approx(0.01 * (k + 1) ** (-5 / 7), rel=1e-15)
        multiplier += 0.1 * (k + 1) ** (-1 / 7)
        state = result.state
    default = F2SA(lr=0.01, multiplier=4.0)
    _, result = hypergradient(PROBLEM, default, PROBLEM.w0, PROBLEM.x0, return_result=True)
    assert result.diagnostics["y_step"] == pytest.approx(0.01 / 4.0, rel=1e-15)


class Counted:
    """A list of batches that counts how many were drawn."""

    def __init__(self, batches):
        self.batches, self.drawn = batches, 0

    def __iter__(self):
        for batch in self.batches:
            self.drawn += 1
            yield batch


class Inner(bilevel.Level):
    def loss(self, batch):
        return PROBLEM.inner_value(self.params["w"], self.outer.params["x"], batch)


class Outer(bilevel.Level):
    def loss(self, batch):
        return PROBLEM.outer_value(self.inner.params["w"], self.params["x"], batch)


@pytest.mark.parametrize("method, inner_per_call, outer_per_call", [
    (AmIGO(iterations=3, step=0.1), 0, 1),
    (AmIGO(iterations=3, step=0.1, fresh_batches=True), 4, 1),
    (F2SA(lr=0.1, steps=2, fresh_batches=True), 3, 3),
    (F2SA(lr=0.1, steps=2, fresh_batches=True, h_batches=2), 4, 3),
])
def test_the_engine_draws_the_batches_the_method_asks_for(method, inner_per_call, outer_per_call):
    inner_data, outer_data = Counted(inner_slices(8)), Counted(outer_slices(6))
    inner = Inner(params={"w": torch.nn.Parameter(PROBLEM.w0.clone())}, data=inner_data,
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    outer = Outer(params={"x": torch.nn.Parameter(PROBLEM.x0.clone())}, data=outer_data,
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    config = bilevel.EngineConfig(outer_steps=3, inner_steps=2, progress=False)
    bilevel.Engine(inner, outer, method=method, config=config).run()
    assert inner_data.drawn == 3 * (2 + inner_per_call) and outer_data.drawn == 3 * outer_per_call
