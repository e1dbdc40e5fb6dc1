"""Engine features for long runs: autocast, gradient clipping, learning-rate schedulers."""
import pytest
import torch

import bilevel


class Train(bilevel.Level):
    def loss(self, batch):
        x, y = batch
        self.seen_dtypes.append(self(x).dtype)
        penalty = torch.exp(self.outer.params["log_decay"]) * sum((w ** 2).sum() for w in self.params.values())
        return ((self(x) - y) ** 2).mean() + penalty


class Validate(bilevel.Level):
    def loss(self, batch):
        x, y = batch
        return ((self.inner(x) - y) ** 2).mean()


def make_engine(method="finite_difference", outer_lr=0.1, outer_optimizer=torch.optim.Adam, **config):
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = torch.tanh(x[:, :1] - x[:, 1:2])
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    train = Train(module=model, optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
                  scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
                  data=[(x[:32], y[:32])])
    train.seen_dtypes = []
    log_decay = torch.tensor(-3.0, requires_grad=True)
    validate = Validate(params={"log_decay": log_decay}, optimizer=lambda p: outer_optimizer(p, lr=outer_lr),
                        data=[(x[32:], y[32:])])
    settings = dict(outer_steps=1, progress=False, log_every=1)
    settings.update(config)
    return bilevel.Engine(train, validate, method, bilevel.EngineConfig(**settings))


@pytest.mark.parametrize("method", ["finite_difference", bilevel.methods.ConjugateGradient(iterations=10, damping=1.0)])
def test_bfloat16_autocast_runs_forward_passes_in_bfloat16_and_stays_close(method):
    full = make_engine(method)
    full.run()
    mixed = make_engine(method, autocast_dtype="bfloat16")
    mixed.run()
    assert torch.bfloat16 in mixed.inner.seen_dtypes and torch.bfloat16 not in full.inner.seen_dtypes
    g_full = full.last_result.grads["log_decay"]
    g_mixed = mixed.last_result.grads["log_decay"]
    assert torch.isfinite(g_mixed)
    assert torch.sign(g_full) == torch.sign(g_mixed)
    assert abs(float(g_mixed - g_full)) < 0.1 * abs(float(g_full))


def test_outer_gradient_clipping_bounds_the_update():
    engine = make_engine("first_order", outer_lr=1.0, outer_optimizer=torch.optim.SGD, outer_grad_clip=1e-2)
    engine.outer.loss = lambda batch: 1e3 * engine.outer.params["log_decay"]  # a huge gradient
    before = engine.outer.stored_params["log_decay"].detach().clone()
    engine.run()
    change = float(engine.outer.stored_params["log_decay"].detach() - before)
    assert abs(change) == pytest.approx(1e-2, rel=1e-4)  # float32 spacing at 3.0 is 2.4e-7


def test_inner_gradient_clipping_bounds_the_inner_step():
    engine = make_engine(inner_grad_clip=1e-3)
    engine.inner_step()  # the gradients stay on the parameters until the next step
    total = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in engine.inner.stored_params.values()))
    assert float(total) == pytest.approx(1e-3, rel=1e-5)


def test_schedulers_step_after_every_optimizer_step():
    engine = make_engine(outer_steps=4, inner_steps=1)
    engine.run()
    assert engine.inner.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.25)


def test_invalid_settings_name_the_field():
    with pytest.raises(ValueError, match="autocast_dtype"):
        bilevel.EngineConfig(autocast_dtype="fp8")
    with pytest.raises(ValueError, match="outer_grad_clip"):
        bilevel.EngineConfig(outer_grad_clip=0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        bilevel.EngineConfig(resume=True)


@pytest.mark.parametrize("name", ["finite_difference", "darts", "unroll"])
def test_method_by_name_takes_the_inner_learning_rate(name):
    assert make_engine(name).method.lr == pytest.approx(0.05)


def test_method_object_is_taken_as_given():
    method = bilevel.methods.FiniteDifference(lr=0.3)
    assert make_engine(method).method is method


def test_on_step_returning_true_stops_the_run_there_and_checkpoints_that_step(tmp_path):
    engine = make_engine(outer_steps=10, checkpoint_dir=str(tmp_path), checkpoint_every=100)
    engine.on_step = lambda engine, step: engine.stop() if step == 4 else None
    history = engine.run()
    assert engine.step == 4 and [step for step, _ in history.series("outer_loss")] == [1, 2, 3, 4]
    stopped_at = engine.outer.stored_params["log_decay"].detach().clone()
    resumed = make_engine(outer_steps=10, checkpoint_dir=str(tmp_path))
    assert resumed.load_checkpoint() and resumed.step == 4
    assert torch.equal(resumed.outer.stored_params["log_decay"].detach(), stopped_at)
    steps = []
    plain = make_engine(outer_steps=3)
    plain.on_step = lambda engine, step: steps.append(step) or True  # a return value (tqdm's update gives True,
    plain.run()                                                       # file.write a count) stops nothing
    assert steps == [1, 2, 3]


@pytest.mark.parametrize("asked_from", ["on_step", "on_validate"])
def test_a_stopped_run_ends_as_a_finished_one_logged_and_validated_at_its_last_step(asked_from):
    engine = make_engine(outer_steps=20, log_every=5, validate_every=5 if asked_from == "on_step" else 7)

    def validate(engine):
        if asked_from == "on_validate" and engine.step == 7:
            engine.stop()
        return {"decay": float(engine.outer.stored_params["log_decay"].detach())}

    engine.on_validate = validate
    if asked_from == "on_step":
        engine.on_step = lambda engine, step: engine.stop() if step == 7 else None
    history = engine.run()
    assert engine.step == 7
    assert [step for step, _ in history.series("outer_loss")] == [5, 7]
    assert [step for step, _ in history.series("val_decay")][-1] == 7
    assert history.last("val_decay") == float(engine.outer.stored_params["log_decay"].detach())


@pytest.mark.parametrize("returned, message", [
    (0.9, r"^Engine: on_validate must return a dict of numbers or None, got float \(0.9\); return e.g. "
          r"\{'loss': value\}$"),
    ({"acc": "high"}, r"^Engine: on_validate returned 'acc': 'high', which is not a number; return numbers"),
])
def test_an_on_validate_that_returns_no_numbers_is_named(returned, message):
    engine = make_engine(outer_steps=1)
    engine.on_validate = lambda engine: returned
    with pytest.raises(TypeError, match=message):
        engine.run()


def test_settings_that_would_do_nothing_say_so(tmp_path):
    with pytest.warns(UserWarning, match=r"^Engine: validate_every=2 but no on_validate was given"):
        make_engine(outer_steps=2, validate_every=2).run()
    make_engine(outer_steps=4, checkpoint_dir=str(tmp_path)).run()
    with pytest.warns(UserWarning, match=r"^Engine: the run is already at step 4, past outer_steps=2"):
        shorter = make_engine(outer_steps=2, checkpoint_dir=str(tmp_path), resume=True)
        shorter.run()
    assert shorter.step == 4
