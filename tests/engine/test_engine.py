"""The object layer: Engine reaches known outer optima; Problem binding; level separation; buffers and dropout
during hypergradients; non-finite checks; validation hooks and history; EngineConfig."""
import json

import pytest
import torch
from torch.func import functional_call

import bilevel
from bilevel.methods import ConjugateGradient, Exact, FiniteDifference, Unroll
from tests.bilevel.problems import DT, Quadratic

# ---------------------------------------------------------------------------------------------------------------
# the quadratic problem as two Problems over plain tensors


class QuadraticInner(bilevel.Level):
    def loss(self, batch):
        return self.quadratic.inner_value(self.quadratic.flat(self.params), self.outer.params["x"], batch)


class QuadraticOuter(bilevel.Level):
    def loss(self, batch):
        return self.quadratic.outer_value(self.quadratic.flat(self.inner.params), self.params["x"], batch)


def quadratic_engine(problem, method, outer_steps=80, inner_steps=15, outer_lr=None, **config):
    inner_params = {k: torch.nn.Parameter(v) for k, v in problem.inner_params(problem.w0).items()}
    outer_params = {"x": torch.nn.Parameter(torch.zeros_like(problem.x0))}
    high = float(torch.linalg.eigvalsh(problem.A)[-1])
    m = torch.linalg.solve(problem.A, problem.B)
    outer_curvature = float(torch.linalg.eigvalsh(m.T @ m + problem.rho * torch.eye(m.shape[1], dtype=DT))[-1])
    inner = QuadraticInner(params=inner_params, optimizer=lambda p: torch.optim.SGD(p, lr=1.0 / high))
    outer = QuadraticOuter(params=outer_params,
                           optimizer=lambda p: torch.optim.SGD(p, lr=outer_lr or 1.0 / outer_curvature))
    inner.quadratic = outer.quadratic = problem
    config = bilevel.EngineConfig(outer_steps=outer_steps, inner_steps=inner_steps, progress=False, **config)
    return bilevel.Engine(inner=inner, outer=outer, method=method, config=config)


def finite_difference_fixed_point(problem, lr):
    """Where FD's hypergradient rho x + lr B^T (w*(x) - t) vanishes, with the inner level at w*(x)."""
    a_inv_b = torch.linalg.solve(problem.A, problem.B)
    lhs = lr * problem.B.T @ a_inv_b + problem.rho * torch.eye(problem.B.shape[1], dtype=DT)
    return torch.linalg.solve(lhs, lr * problem.B.T @ (problem.t + torch.linalg.solve(problem.A, problem.c)))


def unroll_fixed_point(problem, steps, lr):
    """Where the K-step unroll from w*(x) vanishes: rho x + M_K^T (w*(x) - t), M_K = (I - (I - lr A)^K) A^-1 B."""
    n = problem.A.shape[0]
    m = torch.linalg.solve(problem.A, problem.B)
    m_k = (torch.eye(n, dtype=DT) - torch.linalg.matrix_power(torch.eye(n, dtype=DT) - lr * problem.A, steps)) @ m
    lhs = m_k.T @ m + problem.rho * torch.eye(m.shape[1], dtype=DT)
    return torch.linalg.solve(lhs, m_k.T @ (problem.t + torch.linalg.solve(problem.A, problem.c)))


def _relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method", [ConjugateGradient(iterations=20), Exact()], ids=["cg", "exact"])
def test_engine_reaches_the_outer_optimum(method):
    problem = Quadratic(rho=0.5)
    engine = quadratic_engine(problem, method)
    engine.run()
    optimum = problem.outer_optimum()
    assert _relative(engine.outer.stored_params["x"].detach(), optimum) < 1e-4
    assert _relative(torch.zeros_like(optimum), optimum) == 1.0  # started far from it


@pytest.mark.parametrize("method,fixed_point", [
    (FiniteDifference(lr=0.1), lambda p: finite_difference_fixed_point(p, 0.1)),
    (Unroll(steps=5, lr=0.2), lambda p: unroll_fixed_point(p, 5, 0.2)),
], ids=["finite_difference", "unroll"])
def test_engine_with_approximate_methods_reaches_their_own_fixed_point(method, fixed_point):
    """FD and a short unroll are biased: the loop converges to where their hypergradient vanishes (computed by
    hand), which differs from the true optimum x*."""
    problem = Quadratic(rho=0.5)
    engine = quadratic_engine(problem, method)
    engine.run()
    x = engine.outer.stored_params["x"].detach()
    assert _relative(x, fixed_point(problem)) < 1e-4
    assert _relative(fixed_point(problem), problem.outer_optimum()) > 1e-2


# ---------------------------------------------------------------------------------------------------------------
# binding and level separation on a module shared by both levels


class SharedLower(bilevel.Level):
    """Regression with a per-example weight exp(log_weight) held by the same module as the weights."""

    def loss(self, batch):
        X, y = batch
        per_example = (self(X).squeeze(-1) - y) ** 2
        return (torch.exp(self.outer.params["log_weight"]) * per_example).mean()


class SharedUpper(bilevel.Level):
    def loss(self, batch):
        X, y = batch
        return ((self.inner(X).squeeze(-1) - y) ** 2).mean()


class WeightedNet(torch.nn.Module):
    def __init__(self, n, d, batchnorm=False, dropout=0.0):
        super().__init__()
        self.dropout = torch.nn.Dropout(dropout)
        self.norm = torch.nn.BatchNorm1d(d) if batchnorm else torch.nn.Identity()
        self.linear = torch.nn.Linear(d, 1)
        self.log_weight = torch.nn.Parameter(torch.zeros(n))

    def forward(self, X):
        return self.linear(self.norm(self.dropout(X)))


def shared_engine(method="cg", n=16, d=3, batchnorm=False, dropout=0.0, data_seed=0, separate=False, **config):
    """Both levels on one module, or (``separate``) the outer weights as a plain parameter outside it."""
    gen = torch.Generator().manual_seed(data_seed)
    torch.manual_seed(data_seed)
    net = WeightedNet(n, d, batchnorm, dropout).to(DT)
    train = [(torch.randn(n, d, generator=gen, dtype=DT), torch.randn(n, generator=gen, dtype=DT))]
    val = [(torch.randn(n, d, generator=gen, dtype=DT), torch.randn(n, generator=gen, dtype=DT))]
    inner_names = [k for k, _ in net.named_parameters() if k != "log_weight"]
    lower = SharedLower(module=net, params=inner_names, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), data=train)
    upper_params = {"log_weight": torch.nn.Parameter(torch.zeros(n, dtype=DT))} if separate else ["log_weight"]
    upper = SharedUpper(module=None if separate else net, params=upper_params,
                        optimizer=lambda p: torch.optim.SGD(p, lr=0.5), data=val)
    config = bilevel.EngineConfig(**{"outer_steps": 3, "progress": False, **config})
    return bilevel.Engine(inner=lower, outer=upper, method=method, config=config), net, train, val


def test_levels_reach_each_other_and_bound_values_are_in_play():
    engine, net, train, val = shared_engine()
    assert engine.inner.outer is engine.outer and engine.outer.inner is engine.inner
    assert engine.inner.params is engine.inner.stored_params  # nothing bound outside a pass
    inner = {k: torch.randn_like(v) for k, v in engine.inner.stored_params.items()}
    outer = {"log_weight": torch.randn(16, dtype=DT)}
    X, y = train[0]
    expected = (torch.exp(outer["log_weight"]) * (functional_call(net, {**inner, **outer}, (X,)).squeeze(-1) - y) ** 2
                ).mean()
    assert torch.allclose(engine.inner_loss(inner, outer, train[0]), expected, rtol=1e-6, atol=0)
    Xv, yv = val[0]
    assert torch.allclose(engine.outer_loss(inner, outer, val[0]),
                          ((functional_call(net, inner, (Xv,)).squeeze(-1) - yv) ** 2).mean(), rtol=1e-6, atol=0)
    seen = {}
    with engine.inner.bind(inner):
        seen["inner"] = engine.outer.inner.params
    assert seen["inner"] is inner and engine.inner.params is engine.inner.stored_params


def test_engine_losses_keep_float64():
    engine, _, train, val = shared_engine()
    inner, outer = engine.inner.stored_params, engine.outer.stored_params
    assert engine.inner_loss(inner, outer, train[0]).dtype == DT
    assert engine.outer_loss(inner, outer, val[0]).dtype == DT


@pytest.mark.parametrize("method", ["cg", "finite_difference", "unroll"])
def test_real_steps_of_one_level_never_change_the_other(method):
    engine, net, _, _ = shared_engine(method)
    outer_before = {k: v.detach().clone() for k, v in engine.outer.stored_params.items()}
    engine.inner_step()
    for k, v in engine.outer.stored_params.items():
        assert torch.equal(v, outer_before[k]) and v.grad is None, k
    inner_before = {k: v.detach().clone() for k, v in engine.inner.stored_params.items()}
    engine.outer_step()
    for k, v in engine.inner.stored_params.items():
        assert torch.equal(v, inner_before[k]), k
    assert not torch.equal(engine.outer.stored_params["log_weight"], outer_before["log_weight"])


def test_engine_rejects_shared_parameters_and_missing_optimizers():
    net = WeightedNet(4, 2)
    with pytest.raises(ValueError, match=r"share parameters \(log_weight, by their inner names\)"):
        bilevel.Engine(SharedLower(module=net, optimizer=lambda p: torch.optim.SGD(p, lr=0.1)),
                       SharedUpper(module=net, params=["log_weight"], optimizer=lambda p: torch.optim.SGD(p, lr=0.1)))
    with pytest.raises(ValueError, match="no optimizer"):
        bilevel.Engine(SharedLower(module=net, params=["linear.weight"]),
                       SharedUpper(module=net, params=["log_weight"], optimizer=lambda p: torch.optim.SGD(p, lr=0.1)))
    with pytest.raises(ValueError, match="no parameters named.*nope"):
        SharedLower(module=net, params=["nope"])


# ---------------------------------------------------------------------------------------------------------------
# buffers and dropout


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the inner level is not trained: CG/Neumann warn
@pytest.mark.parametrize("separate", [False, True], ids=["shared_module", "separate_levels"])
@pytest.mark.parametrize("method", ["cg", "exact", "finite_difference", "unroll", "neumann"])
def test_batchnorm_statistics_change_only_in_real_inner_steps(method, separate):
    engine, net, _, _ = shared_engine(method, batchnorm=True, separate=separate)
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    engine.outer_step()
    for k, v in net.named_buffers():
        assert torch.equal(v, buffers[k]), f"the hypergradient changed buffer {k}"
    engine.inner_step()
    assert not torch.equal(net.norm.running_mean, buffers["norm.running_mean"])
    assert int(net.norm.num_batches_tracked) == int(buffers["norm.num_batches_tracked"]) + 1


class MaskRecorder:
    """Records the dropout masks a Dropout module draws (forward hook)."""

    def __init__(self, dropout):
        self.masks = []
        dropout.register_forward_hook(lambda module, inputs, output: self.masks.append(output != 0))


def test_all_passes_of_one_hypergradient_see_the_same_dropout_masks():
    lr = 0.1
    engine, net, train, val = shared_engine(FiniteDifference(lr=lr, epsilon=0.01), dropout=0.4)
    recorder = MaskRecorder(net.dropout)
    engine.outer_step()
    masks = recorder.masks  # inner pass at w, outer pass at w', inner passes at w +- e v
    assert len(masks) == 4
    assert all(torch.equal(masks[0], m) for m in masks[2:]), "inner passes drew different masks"
    assert not torch.equal(masks[0], masks[1]) and not masks[0].all()
    # the same hypergradient by hand: the one-step unroll with those masks, differentiated twice
    X, y = train[0]
    Xv, yv = val[0]
    inner = {k: v.detach().clone().requires_grad_() for k, v in engine.inner.stored_params.items()}
    log_weight = torch.zeros(16, dtype=DT, requires_grad=True)

    def forward(params, inputs, mask):
        return functional_call(net.linear, {k.split(".", 1)[1]: v for k, v in params.items()},
                               (inputs * mask / 0.6,)).squeeze(-1)

    inner_loss = (torch.exp(log_weight) * (forward(inner, X, masks[0]) - y) ** 2).mean()
    step = torch.autograd.grad(inner_loss, list(inner.values()), create_graph=True)
    virtual = {k: v - lr * g for (k, v), g in zip(inner.items(), step)}
    reference, = torch.autograd.grad(((forward(virtual, Xv, masks[1]) - yv) ** 2).mean(), log_weight)
    hypergradient = engine.last_result.grads["log_weight"]
    assert float((hypergradient - reference).norm() / reference.norm()) < 1e-9
    # the next hypergradient draws fresh masks
    engine.outer_step()
    assert not torch.equal(recorder.masks[4], masks[0])


def test_seeded_runs_with_dropout_are_reproducible():
    results = []
    for _ in range(2):
        engine, net, _, _ = shared_engine("finite_difference", dropout=0.3, data_seed=1, outer_steps=4, seed=7)
        engine.run()
        results.append(torch.cat([p.detach().reshape(-1) for p in net.parameters()]))
    assert torch.equal(results[0], results[1])


# ---------------------------------------------------------------------------------------------------------------
# checks, hooks, history


@pytest.mark.parametrize("method", ["cg", "first_order", "finite_difference"])
@pytest.mark.parametrize("level", ["inner", "outer"])
def test_non_finite_values_raise_naming_step_and_level(level, method):
    engine, _, _, _ = shared_engine(method, outer_steps=5)
    problem = engine.inner if level == "inner" else engine.outer
    original = problem.loss

    def poisoned(batch):
        value = original(batch)
        return value * float("nan") if engine.step >= 2 else value

    problem.loss = poisoned
    with pytest.raises(FloatingPointError, match=rf"non-finite loss at outer step 3 \({level} level\)"):
        engine.run()
    assert engine.step == 2


class CountingSGD(torch.optim.SGD):
    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


def test_step_counts_validation_hook_and_history():
    engine, _, _, _ = shared_engine("cg", outer_steps=10, inner_steps=2, warmup_inner_steps=3, validate_every=3,
                                    log_every=4)
    engine.inner.optimizer = CountingSGD(list(engine.inner.stored_params.values()), lr=0.1)
    engine.outer.optimizer = CountingSGD(list(engine.outer.stored_params.values()), lr=0.1)
    calls, steps = [], []
    engine.on_validate = lambda e: calls.append(e.step) or {"score": 10.0 * e.step}
    engine.on_step = lambda e, step: steps.append(step)
    history = engine.run()
    assert engine.inner.optimizer.steps == 3 + 10 * 2 and engine.outer.optimizer.steps == 10
    assert calls == [3, 6, 9, 10] and steps == list(range(1, 11))
    assert history.series("val_score") == [(3, 30.0), (6, 60.0), (9, 90.0), (10, 100.0)]
    assert [s for s, _ in history.series("outer_loss")] == [4, 8, 10]
    assert [s for s, _ in history.series("residual")] == [4, 8, 10]
    assert json.loads(history.to_json()) == history.rows


@pytest.mark.parametrize("field,value", [
    ("outer_steps", 0), ("outer_steps", 1.5), ("outer_steps", True), ("log_every", 0), ("inner_steps", -1),
    ("warmup_inner_steps", -1), ("validate_every", -2), ("validate_every", 0.5),
])
def test_engine_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"EngineConfig: {field}"):
        bilevel.EngineConfig(**{field: value})


def test_engine_config_json_round_trip():
    config = bilevel.EngineConfig(outer_steps=7, inner_steps=3, warmup_inner_steps=2, validate_every=5, log_every=2,
                                  seed=11, progress=False, check_finite=False)
    assert bilevel.EngineConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["seed"] == 11


def test_problem_is_the_former_name_of_level():
    assert bilevel.Problem is bilevel.Level
