"""A small nonlinear bilevel problem run by the distributed test, as one process or under torchrun.

Usage under torchrun: ``python -m torch.distributed.run --nproc_per_node=2 two_level_mlp.py METHOD OUT.pt``.
"""
import sys

import torch

import bilevel
from bilevel.distributed import rank as shard_rank, shard

BATCH = 16


def make_data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * BATCH, 4, generator=generator, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.1 * torch.randn(2 * BATCH, 1, generator=generator, dtype=torch.float64)
    return (x[:BATCH], y[:BATCH]), (x[BATCH:], y[BATCH:])


class Train(bilevel.Level):
    def loss(self, batch):
        x, y = batch
        decay = sum(torch.exp(self.outer.params[f"log_decay.{name}"]) * (w ** 2).sum()
                    for name, w in self.params.items())
        return ((self(x) - y) ** 2).mean() + 0.5 * decay


class Validate(bilevel.Level):
    def loss(self, batch):
        x, y = batch
        prior = sum(torch.exp(v) for v in self.params.values())  # a direct term, so first_order moves too
        return ((self.inner(x) - y) ** 2).mean() + 0.01 * prior


METHODS = {
    "first_order": bilevel.methods.FirstOrder(),
    "finite_difference": bilevel.methods.FiniteDifference(lr=0.1, epsilon=0.01),
    "cg": bilevel.methods.ConjugateGradient(iterations=5, tol=1e-12, damping=0.5),
    "unroll": bilevel.methods.Unroll(steps=2, lr=0.1),
    "soba_paper_order": bilevel.methods.SOBA(step=0.1),
}
# Engine settings besides the defaults: SOBA's inner step takes the inner gradient averaged in its products' collective
CONFIGS = {"soba_paper_order": {"reuse_inner_gradient": True}}
EARLY_STOP, EARLY_STOP_AT = "first_order_early_stop", (3, 5)  # on_step asks rank 0 to stop at step 3, rank 1 at 5


def run(method, train_batch, val_batch, outer_steps=2, stop_at=None):
    """Two outer steps from a fixed initialisation; returns the final parameters of both levels and the logged
    losses (``history.inner_loss``, ``history.outer_loss``), which under torchrun must be global means too.
    ``stop_at``: the step at which ``on_step`` asks this process to stop."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    log_decay = {f"log_decay.{name}": torch.full((), -3.0, dtype=torch.float64, requires_grad=True)
                 for name, _ in model.named_parameters()}
    train = Train(module=model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), data=[train_batch])
    validate = Validate(params=log_decay, optimizer=lambda p: torch.optim.Adam(p, lr=0.05), data=[val_batch])
    engine = bilevel.Engine(train, validate, METHODS[method],
                            bilevel.EngineConfig(outer_steps=outer_steps, progress=False, log_every=1,
                                                 **CONFIGS.get(method, {})),
                            on_step=None if stop_at is None else lambda engine, step: step == stop_at and engine.stop())
    engine.run()
    losses = {f"history.{key}": torch.tensor([value for _, value in engine.history.series(key)], dtype=torch.float64)
              for key in ("inner_loss", "outer_loss")}
    return {**{name: p.detach().clone() for name, p in {**train.stored_params, **validate.stored_params}.items()},
            **losses}


def main(method, out):
    torch.distributed.init_process_group("gloo")
    train_batch, val_batch = make_data()
    local_train = tuple(shard(t) for t in train_batch)
    local_val = tuple(shard(t) for t in val_batch)
    if method == EARLY_STOP:  # the ranks disagree on when to stop: every rank must stop at the first request
        result = run("first_order", local_train, local_val, outer_steps=6, stop_at=EARLY_STOP_AT[shard_rank()])
    else:
        result = run(method, local_train, local_val)
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, result)
    if torch.distributed.get_rank() == 0:
        torch.save(gathered, out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
