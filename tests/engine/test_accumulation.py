"""Gradient accumulation: micro-batches give the derivative of the whole batch, for every method and in the Engine."""
import pytest
import torch

import bilevel
from bilevel import MicroBatches

torch_dtype = torch.float64


def make_problem(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, generator=generator, dtype=torch_dtype)
    y = torch.tanh(x @ torch.randn(5, 1, generator=generator, dtype=torch_dtype))
    w = {"w1": 0.3 * torch.randn(5, 6, generator=generator, dtype=torch_dtype),
         "w2": 0.3 * torch.randn(6, 1, generator=generator, dtype=torch_dtype)}
    hyper = {"log_decay": torch.tensor([-0.5, 0.0], dtype=torch_dtype)}  # convex enough for CG and Neumann

    def predict(params, inputs):
        return torch.tanh(inputs @ params["w1"]) @ params["w2"]

    def inner_loss(params, outer, batch):
        inputs, targets = batch
        decay = torch.exp(outer["log_decay"])
        return ((predict(params, inputs) - targets) ** 2).mean() + decay[0] * (params["w1"] ** 2).sum() \
            + decay[1] * (params["w2"] ** 2).sum()

    def outer_loss(params, outer, batch):
        inputs, targets = batch
        return ((predict(params, inputs) - targets) ** 2).mean() + 0.01 * outer["log_decay"].sum()

    return inner_loss, outer_loss, w, hyper, (x[:16], y[:16]), (x[16:], y[16:])


def split(batch, n):
    inputs, targets = batch
    return MicroBatches(list(zip(inputs.chunk(n), targets.chunk(n))))


METHODS = [bilevel.methods.FirstOrder(), bilevel.methods.FiniteDifference(lr=0.1),
           bilevel.methods.IdentityImplicit(), bilevel.methods.Unroll(steps=3, lr=0.1),
           bilevel.methods.Unroll(steps=2, lr=0.01, optimizer="adam"),
           bilevel.methods.ConjugateGradient(iterations=8, damping=0.1), bilevel.methods.Neumann(iterations=10),
           bilevel.methods.Exact(damping=0.1)]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
@pytest.mark.parametrize("pieces", [2, 4])
def test_micro_batches_equal_the_whole_batch(method, pieces):
    inner_loss, outer_loss, w, hyper, train, val = make_problem()
    whole = bilevel.hypergradient(inner_loss, outer_loss, w, hyper, train, val, method, return_result=True)
    accumulated = bilevel.hypergradient(inner_loss, outer_loss, w, hyper, split(train, pieces), split(val, pieces),
                                        method, return_result=True)
    assert torch.count_nonzero(whole.grads["log_decay"]) == 2
    torch.testing.assert_close(accumulated.grads["log_decay"], whole.grads["log_decay"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.as_tensor(accumulated.diagnostics["outer_loss"]),
                               torch.as_tensor(whole.diagnostics["outer_loss"]), rtol=1e-12, atol=0)


class Train(bilevel.Level):
    def loss(self, batch):
        return self.inner_loss(self.params, self.outer.params, batch)


class Validate(bilevel.Level):
    def loss(self, batch):
        return self.outer_loss(self.inner.params, self.params, batch)


def run_engine(accumulation_steps):
    inner_loss, outer_loss, w, hyper, train, val = make_problem()
    n = accumulation_steps
    train_data = list(zip(train[0].chunk(n), train[1].chunk(n)))
    val_data = list(zip(val[0].chunk(n), val[1].chunk(n)))
    lower = Train(params={k: v.clone().requires_grad_() for k, v in w.items()},
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.1), data=train_data)
    upper = Validate(params={k: v.clone().requires_grad_() for k, v in hyper.items()},
                     optimizer=lambda p: torch.optim.Adam(p, lr=0.05), data=val_data)
    lower.inner_loss, upper.outer_loss = inner_loss, outer_loss
    engine = bilevel.Engine(lower, upper, bilevel.methods.FiniteDifference(lr=0.1),
                            bilevel.EngineConfig(outer_steps=3, inner_steps=2, progress=False,
                                                 accumulation_steps=accumulation_steps))
    engine.run()
    return {k: v.detach() for k, v in {**lower.stored_params, **upper.stored_params}.items()}


def test_engine_with_accumulation_equals_the_whole_batch():
    whole, accumulated = run_engine(1), run_engine(4)
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-10, atol=1e-12)
