"""Unroll against `higher` (an independent implementation of differentiable optimizers), in float64, on an MLP whose
inner loss has one weight-decay coefficient per parameter tensor (the outer parameters are their logarithms)."""
import pytest
import torch
from torch.func import functional_call

import bilevel
from bilevel.inner_optimizers import make_inner_optimizer
from problems import DT, relative_error

higher = pytest.importorskip("higher")

OPTIMIZERS = {  # name -> (bilevel optimizer and settings, torch.optim factory)
    "sgd": (("sgd", {}), lambda p, lr: torch.optim.SGD(p, lr=lr)),
    "momentum": (("momentum", {"momentum": 0.9}), lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9)),
    "nesterov": (("momentum", {"momentum": 0.8, "nesterov": True}),
                 lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.8, nesterov=True)),
    "dampening": (("momentum", {"momentum": 0.9, "dampening": 0.3}),
                  lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, dampening=0.3)),
    "adam": (("adam", {"eps": 0.0}), lambda p, lr: torch.optim.Adam(p, lr=lr, eps=0.0)),
}
# higher's Adam adds eps to sqrt(v) before the bias correction sqrt(1 - beta2^t), torch.optim (and bilevel) after it:
# they agree exactly for eps = 0, and for one step when higher's eps is bilevel's times sqrt(1 - beta2). With eps = 0
# one Adam step is lr * sign(grad), whose hypergradient vanishes, so the one-step case uses that mapping.
# test_inner_optimizer_steps_follow_torch_optim checks bilevel's Adam with the default eps against torch.optim.Adam.
ONE_STEP_ADAM = (("adam", {"eps": 1e-2}), lambda p, lr: torch.optim.Adam(p, lr=lr, eps=1e-2 * (1 - 0.999) ** 0.5))
LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "dampening": 0.05, "adam": 0.01}


def make_task(seed=0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).to(DT)
    data = [(torch.randn(8, 3, generator=gen, dtype=DT), torch.randn(8, 2, generator=gen, dtype=DT)) for _ in range(6)]
    log_decay = {name: torch.tensor(-2.0 + 0.3 * i, dtype=DT) for i, (name, _) in enumerate(model.named_parameters())}
    return model, data, log_decay


def inner_loss_of(model):
    def inner_loss(params, log_decay, batch):
        X, y = batch
        fit = ((functional_call(model, params, (X,)) - y) ** 2).mean()
        return fit + 0.5 * sum(torch.exp(log_decay[k]) * (p ** 2).sum() for k, p in params.items())
    return inner_loss


def outer_loss_of(model):
    def outer_loss(params, log_decay, batch):
        X, y = batch
        return ((functional_call(model, params, (X,)) - y) ** 2).mean()
    return outer_loss


def higher_reference(model, log_decay, batches, val_batch, make_optimizer, lr):
    log_decay = {k: v.clone().requires_grad_() for k, v in log_decay.items()}
    names = [name for name, _ in model.named_parameters()]
    optimizer = make_optimizer(model.parameters(), lr)
    with higher.innerloop_ctx(model, optimizer, copy_initial_weights=True) as (fmodel, diffopt):
        for X, y in batches:
            params = dict(zip(names, fmodel.parameters()))
            loss = ((fmodel(X) - y) ** 2).mean() + 0.5 * sum(
                torch.exp(log_decay[k]) * (p ** 2).sum() for k, p in params.items())
            diffopt.step(loss)
        X, y = val_batch
        outer = ((fmodel(X) - y) ** 2).mean()
        grads = torch.autograd.grad(outer, list(log_decay.values()))
    return dict(zip(log_decay, grads))


def _flat(grads):
    return torch.stack([grads[k] for k in sorted(grads)])


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("per_step_batches", [False, True], ids=["same_batch", "batch_list"])
def test_unroll_matches_higher(optimizer, steps, per_step_batches):
    model, data, log_decay = make_task()
    (name, settings), make_optimizer = ONE_STEP_ADAM if (optimizer, steps) == ("adam", 1) else OPTIMIZERS[optimizer]
    lr = LR[optimizer]
    batches = data[:steps] if per_step_batches else [data[0]] * steps
    inner_batch = bilevel.StepBatches(batches) if per_step_batches else data[0]
    method = bilevel.methods.Unroll(steps=steps, lr=lr, optimizer=name, optimizer_settings=settings)
    inner = {k: v.detach().clone() for k, v in model.named_parameters()}
    ours = bilevel.hypergradient(inner_loss_of(model), outer_loss_of(model), inner, log_decay, inner_batch,
                                 data[-1], method)
    reference = higher_reference(model, log_decay, batches, data[-1], make_optimizer, lr)
    assert set(ours) == set(log_decay)
    assert relative_error(_flat(ours), _flat(reference)) < 1e-10
    assert float(_flat(reference).norm()) > 1e-6


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_inner_optimizer_steps_follow_torch_optim(optimizer):
    """The differentiable steps reproduce torch.optim's trajectory (here with Adam's default eps too)."""
    (name, settings), make_optimizer = OPTIMIZERS[optimizer]
    if name == "adam":
        settings = {}
        make_optimizer = lambda p, lr: torch.optim.Adam(p, lr=lr)  # noqa: E731
    model, data, log_decay = make_task(seed=1)
    loss_fn = inner_loss_of(model)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    ours = make_inner_optimizer(name, LR[optimizer], **settings)
    state = ours.init(params)
    reference = make_optimizer(model.parameters(), LR[optimizer])
    for batch in data[:4]:
        grads = dict(zip(params, torch.autograd.grad(loss_fn({k: v.requires_grad_() for k, v in params.items()},
                                                             log_decay, batch), list(params.values()))))
        params, state = ours.update(grads, state, {k: v.detach() for k, v in params.items()})
        params = {k: v.detach() for k, v in params.items()}
        reference.zero_grad()
        loss_fn(dict(model.named_parameters()), log_decay, batch).backward()
        reference.step()
    for k, p in model.named_parameters():
        assert torch.allclose(params[k], p.detach(), rtol=1e-12, atol=1e-14), k
