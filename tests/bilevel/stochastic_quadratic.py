"""The quadratic bilevel problem of ``problems.Quadratic`` as two Engine levels, optionally with minibatch noise.

With ``noise > 0`` each batch is a row of a fixed, centred table of noise vectors (mean exactly zero), added linearly
to the losses: g_i = g + <xi_i, w>, f_j = f + <zeta_j, w> + <chi_j, x>. The noise shifts gradients and leaves every
second derivative exact; the average over the table is the noiseless problem, so x* is the same.
"""
import torch
from torch.utils.data import DataLoader, TensorDataset

import bilevel
from tests.bilevel.problems import DT, Quadratic


def centred_noise(rows, size, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, size, generator=gen, dtype=DT)
    return scale * (table - table.mean(0))


class Inner(bilevel.Level):
    def loss(self, batch):
        w = self.quadratic.flat(self.params)
        value = self.quadratic.inner_value(w, self.outer.params["x"], None)
        return value if batch is None else value + batch[0][0] @ w


class Outer(bilevel.Level):
    def loss(self, batch):
        w, x = self.quadratic.flat(self.inner.params), self.params["x"]
        value = self.quadratic.outer_value(w, x, None)
        if batch is None:
            return value
        noise_w, noise_x = batch[0][0].split([w.numel(), x.numel()])
        return value + noise_w @ w + noise_x @ x


def quadratic_engine(method, problem=None, outer_steps=300, inner_steps=1, inner_lr=None, outer_lr=None, noise=0.0,
                     rows=64, **config):
    """The Engine on ``problem`` (default ``Quadratic(rho=0.5)``) from w0 and x = 0, SGD at both levels (steps
    1/lambda_max of the inner Hessian and of the outer problem unless given)."""
    problem = problem or Quadratic(rho=0.5)
    n, m = problem.A.shape[0], problem.B.shape[1]
    mapping = torch.linalg.solve(problem.A, problem.B)
    outer_curvature = torch.linalg.eigvalsh(mapping.T @ mapping + problem.rho * torch.eye(m, dtype=DT))[-1]
    inner_lr = inner_lr or 1.0 / float(torch.linalg.eigvalsh(problem.A)[-1])
    outer_lr = outer_lr or 1.0 / float(outer_curvature)
    data = {}
    if noise:
        data = {"inner": DataLoader(TensorDataset(centred_noise(rows, n, noise, 1)), batch_size=1, shuffle=True),
                "outer": DataLoader(TensorDataset(centred_noise(rows, n + m, noise, 2)), batch_size=1, shuffle=True)}
    inner = Inner(params={k: torch.nn.Parameter(v) for k, v in problem.inner_params(problem.w0).items()},
                  optimizer=lambda p: torch.optim.SGD(p, lr=inner_lr), data=data.get("inner"))
    outer = Outer(params={"x": torch.nn.Parameter(torch.zeros(m, dtype=DT))},
                  optimizer=lambda p: torch.optim.SGD(p, lr=outer_lr), data=data.get("outer"))
    inner.quadratic = outer.quadratic = problem
    config = bilevel.EngineConfig(outer_steps=outer_steps, inner_steps=inner_steps, progress=False,
                                  seed=0 if noise else None, **config)
    return bilevel.Engine(inner=inner, outer=outer, method=method, config=config)


def outer_value(engine):
    return engine.outer.stored_params["x"].detach().clone()
