"""EngineConfig(reuse_inner_gradient=True): DARTS' order with the inner step taken from the method's own gradient."""
import pytest
import torch

import bilevel

DT = torch.float64


def make(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 4, generator=generator, dtype=DT)
    y = torch.sin(x @ torch.randn(4, 1, generator=generator, dtype=DT))
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
    val = [(x[32:], y[32:])]
    w0 = {"w1": 0.5 * torch.randn(4, 6, generator=generator, dtype=DT),
          "w2": 0.5 * torch.randn(6, 1, generator=generator, dtype=DT)}
    return batches, val, w0


def predict(w, inputs):
    return torch.tanh(inputs @ w["w1"]) @ w["w2"]


def inner_loss(w, h, batch):
    inputs, targets = batch
    return ((predict(w, inputs) - targets) ** 2).mean() + torch.exp(h["log_decay"]) * sum((v ** 2).sum() for v in w.values())


def outer_loss(w, h, batch):
    inputs, targets = batch
    return ((predict(w, inputs) - targets) ** 2).mean()


class Counted(bilevel.Level):
    calls = 0

    def loss(self, batch):
        type(self).calls += 1
        return self.function(self.inner.params if self.inner else self.params,
                             self.params if self.inner else self.outer.params, batch)


def engine(method, reuse, steps=5):
    batches, val, w0 = make()
    lower = Counted(params={k: v.clone().requires_grad_() for k, v in w0.items()},
                    optimizer=lambda p: torch.optim.SGD(p, lr=0.1), data=batches)
    upper = Counted(params={"log_decay": torch.tensor(-2.0, dtype=DT, requires_grad=True)},
                    optimizer=lambda p: torch.optim.Adam(p, lr=0.1), data=val)
    lower.function, upper.function = inner_loss, outer_loss
    return bilevel.Engine(lower, upper, method, bilevel.EngineConfig(outer_steps=steps, progress=False,
                                                                     reuse_inner_gradient=reuse))


@pytest.mark.parametrize("method", [bilevel.methods.FiniteDifference(lr=0.1), bilevel.methods.Unroll(steps=2, lr=0.1)],
                         ids=["finite_difference", "unroll"])
def test_reuse_equals_the_hand_written_darts_order(method):
    run = engine(method, reuse=True)
    run.run()
    batches, val, w0 = make()
    w = {k: v.clone() for k, v in w0.items()}
    h = {"log_decay": torch.tensor(-2.0, dtype=DT, requires_grad=True)}
    outer_optimizer = torch.optim.Adam(list(h.values()), lr=0.1)
    for step in range(5):
        batch = batches[step % len(batches)]
        grads = bilevel.hypergradient(inner_loss, outer_loss, w, h, batch, val[0], method)
        wl = {k: v.detach().requires_grad_() for k, v in w.items()}
        inner_grads = torch.autograd.grad(inner_loss(wl, {k: v.detach() for k, v in h.items()}, batch), list(wl.values()))
        h["log_decay"].grad = grads["log_decay"]
        outer_optimizer.step()
        w = {k: (v - 0.1 * g).detach() for (k, v), g in zip(w.items(), inner_grads)}
    for name in w:
        torch.testing.assert_close(run.inner.stored_params[name].detach(), w[name], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(run.outer.stored_params["log_decay"].detach(), h["log_decay"].detach(),
                               rtol=1e-12, atol=1e-14)


def test_reuse_saves_one_inner_pass_per_outer_step():
    counts = {}
    for reuse in (False, True):
        run = engine(bilevel.methods.FiniteDifference(lr=0.1), reuse=reuse, steps=3)
        Counted.calls = 0
        run.run()
        counts[reuse] = Counted.calls
    assert counts[False] == 3 * 5  # a real inner step, then 3 inner passes and 1 outer pass in the hypergradient
    assert counts[True] == 3 * 4
