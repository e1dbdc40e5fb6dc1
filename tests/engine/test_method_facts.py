"""Methods describe themselves and the Engine asks them: a DataLoader's [x, y] batches with every method, the inner
learning rate that follows a scheduler, an unroll by name that models the inner optimizer it is given, settings
checked when a method is made."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import bilevel
from bilevel.inner_optimizers import make_inner_optimizer, model_of
from bilevel.methods import FiniteDifference, Unroll

DT = torch.float64


class Regression(bilevel.Level):
    """Ridge regression with one L2 weight exp(x_j) per feature; batches are DataLoader [features, targets] lists."""

    def loss(self, batch):
        features, targets = batch
        residual = features @ self.params["w"] - targets
        return 0.5 * (residual ** 2).mean() + 0.5 * (torch.exp(self.outer.params["log_l2"]) * self.params["w"] ** 2).sum()


class Validation(bilevel.Level):
    def loss(self, batch):
        features, targets = batch
        return 0.5 * ((features @ self.inner.params["w"] - targets) ** 2).mean()


def regression_engine(method, inner_optimizer=None, scheduler=None, outer_steps=3, as_tuples=False):
    """A DataLoader of [features, targets] lists, or (``as_tuples``) the same batches as tuples."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, 5, generator=generator, dtype=DT)
    targets = features @ torch.randn(5, generator=generator, dtype=DT) + 0.1 * torch.randn(64, generator=generator,
                                                                                            dtype=DT)
    loader = DataLoader(TensorDataset(features, targets), batch_size=16, shuffle=False)
    if as_tuples:
        loader = [tuple(batch) for batch in loader]
    inner = Regression(params={"w": torch.nn.Parameter(torch.zeros(5, dtype=DT))}, data=loader,
                       optimizer=inner_optimizer or (lambda p: torch.optim.SGD(p, lr=0.1)), scheduler=scheduler)
    outer = Validation(params={"log_l2": torch.nn.Parameter(torch.full((5,), -2.0, dtype=DT))}, data=loader,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    config = bilevel.EngineConfig(outer_steps=outer_steps, inner_steps=1, progress=False)
    return bilevel.Engine(inner=inner, outer=outer, method=method, config=config)


# bome at eta = 2: at the default 0.5, descending the outer loss already lowers q fast enough in these 3 steps, so its
# multiplier is 0 and, the outer loss not depending on log_l2, x would not move (as BOME intends)
CASES = [(name, {"implicit": {"solver": bilevel.solvers.DenseSolver()}, "bome": {"eta": 2.0}}.get(name, {}))
         for name in bilevel.methods.names()]
CASES += [(name, {"steps": 2}) for name, _ in CASES if bilevel.methods.get(name).main_count == "steps"]


@pytest.mark.parametrize("name, settings", CASES, ids=[f"{n}{'-' + str(s['steps']) if 'steps' in s else ''}"
                                                       for n, s in CASES])
def test_a_dataloader_drives_every_registered_method(name, settings):
    """A default DataLoader yields [x, y] lists: one batch, never one batch per unroll step."""
    results = []
    for as_tuples in (False, True):
        engine = regression_engine(bilevel.MethodSpec(name, settings), as_tuples=as_tuples)
        engine.run()
        results.append(engine.outer.stored_params["log_l2"].detach())
    assert torch.isfinite(results[0]).all()
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    if bilevel.methods.get(name).name != "first_order":  # the outer loss has no direct dependence on log_l2: first order stays put
        assert not torch.equal(results[0], torch.full((5,), -2.0, dtype=DT))


@pytest.mark.parametrize("name", ["finite_difference", "unroll"])
def test_the_method_follows_the_schedulers_learning_rate(name):
    engine = regression_engine(name, scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
                               outer_steps=5)
    seen = []
    engine.on_step = lambda e, step: seen.append(e.method.lr)
    engine.run()
    # inner step t (lr 0.1 * 0.5^(t-1)), then the scheduler halves it; the hypergradient models the next step
    assert seen == pytest.approx([0.1 * 0.5 ** t for t in range(1, 6)], rel=1e-15)
    assert engine.method.lr == engine.inner.optimizer.param_groups[0]["lr"] == pytest.approx(0.003125)


def test_settings_the_caller_fixed_are_kept():
    engine = regression_engine(bilevel.MethodSpec("finite_difference", {"lr": 0.5}))
    engine.run()
    assert engine.method.lr == 0.5
    fixed = FiniteDifference(lr=0.25)
    assert regression_engine(fixed).method is fixed


@pytest.mark.parametrize("optimizer, expected", [
    (lambda p: torch.optim.SGD(p, lr=0.1), ("sgd", {"weight_decay": 0})),
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.01),
     ("momentum", {"momentum": 0.8, "dampening": 0, "nesterov": True, "weight_decay": 0.01})),
    (lambda p: torch.optim.Adam(p, lr=0.1, betas=(0.8, 0.99), eps=1e-6),
     ("adam", {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0})),
    (lambda p: torch.optim.AdamW(p, lr=0.1), ("adamw", {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01})),
], ids=["sgd", "nesterov", "adam", "adamw"])
def test_an_unroll_by_name_models_the_inner_optimizer_it_is_given(optimizer, expected):
    engine = regression_engine("unroll", inner_optimizer=optimizer)
    engine.run()
    assert (engine.method.optimizer, engine.method.optimizer_settings) == expected
    assert engine.method.lr == 0.1


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.1),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.1),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1),
    lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.3, betas=(0.8, 0.9)),
], ids=["sgd_decay", "momentum_dampening_decay", "nesterov", "adam_decay", "adamw"])
def test_the_modelled_optimizer_reproduces_torch_optim(make):
    """model_of(optimizer) gives a differentiable optimizer whose trajectory is torch.optim's to rounding."""
    generator = torch.Generator().manual_seed(1)
    target = torch.randn(6, generator=generator, dtype=DT)
    weights = torch.nn.Parameter(torch.randn(6, generator=generator, dtype=DT))
    reference = make([weights])
    name, settings = model_of(reference, "test")
    ours = make_inner_optimizer(name, reference.param_groups[0]["lr"], **settings)
    params = {"w": weights.detach().clone()}
    state = ours.init(params)
    for step in range(5):
        scale = 1.0 + step
        grads = {"w": scale * (params["w"] - target) ** 3}
        params, state = ours.update(grads, state, params)
        reference.zero_grad()
        (scale * 0.25 * ((weights - target) ** 4).sum()).backward()
        reference.step()
    torch.testing.assert_close(params["w"], weights.detach(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("make, fragment", [
    (lambda p: torch.optim.RMSprop(p, lr=0.1), "cannot model the inner optimizer RMSprop"),
    (lambda p: torch.optim.Adam(p, lr=0.1, amsgrad=True), "cannot model the inner optimizer Adam with amsgrad"),
    (lambda p: torch.optim.SGD(p, lr=0.1, maximize=True), "cannot model the inner optimizer SGD with maximize"),
])
def test_an_optimizer_an_unroll_cannot_model_is_refused_when_the_engine_is_made(make, fragment):
    with pytest.raises(ValueError, match=fragment) as error:
        regression_engine("unroll", inner_optimizer=make)
    assert "\n" not in str(error.value)
    regression_engine(Unroll(lr=0.1, optimizer="sgd"), inner_optimizer=make)  # an explicit model is taken as given


def test_parameter_groups_with_different_rates_are_refused_for_a_method_that_models_one_step():
    def two_groups(params):
        return torch.optim.SGD([{"params": params, "lr": 0.1}, {"params": [torch.zeros(1, requires_grad=True)],
                                                                "lr": 0.2}])
    with pytest.raises(ValueError, match=r"learning rates \[0.1, 0.2\].*pass a method object with its lr set"):
        regression_engine("finite_difference", inner_optimizer=two_groups)


@pytest.mark.parametrize("settings, fragment", [
    ({"optimizer": "momentum", "optimizer_settings": {"bogus": 1}}, "has no setting bogus; its settings: momentum"),
    ({"optimizer": "momentum", "optimizer_settings": {"momentum": -1}}, "momentum must be >= 0"),
    ({"optimizer": "momentum", "optimizer_settings": {"nesterov": True, "dampening": 0.1}},
     "Nesterov momentum requires momentum > 0 and dampening = 0"),
    ({"optimizer": "adam", "optimizer_settings": {"betas": (1.5, 0.9)}}, r"betas must be two numbers in \[0, 1\)"),
    ({"optimizer": "adam", "optimizer_settings": {"eps": -1.0}}, "eps must be >= 0"),
    ({"optimizer": "sgd", "optimizer_settings": {"weight_decay": -0.1}}, "weight_decay must be >= 0"),
    ({"optimizer": "rmsprop"}, "unknown inner optimizer 'rmsprop'"),
])
def test_invalid_optimizer_settings_fail_when_the_method_is_made(settings, fragment):
    with pytest.raises(ValueError, match=fragment) as error:
        bilevel.methods.get("unroll", lr=0.1, **settings)
    assert str(error.value).startswith("Unroll: ") and "\n" not in str(error.value)


def test_a_user_method_that_declares_its_inner_step_is_filled_everywhere():
    from dataclasses import dataclass
    from typing import Optional

    @dataclass
    class Halved(FiniteDifference):
        """A finite difference whose step setting has another name: declared, it is filled like a built-in's."""
        inner_lr = "step_size"
        step_size: Optional[float] = None

        def __post_init__(self):
            self.lr = None if self.step_size is None else self.step_size / 2

    registry = dict(bilevel.methods.base._REGISTRY)
    try:
        bilevel.methods.register("halved_fd")(Halved)
        engine = regression_engine("halved_fd")
        engine.run()
        assert (engine.method.step_size, engine.method.lr) == (0.1, 0.05)
        spec = bilevel.compare.parse_specs("halved_fd")[0]
        assert spec.build(inner_lr=0.4).step_size == 0.4
    finally:
        bilevel.methods.base._REGISTRY.clear()
        bilevel.methods.base._REGISTRY.update(registry)
