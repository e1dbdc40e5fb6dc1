"""A bilevel run with a shuffling DataLoader and dropout, checkpointing every step; used by the resume test.

``python resumable_run.py CHECKPOINT_DIR OUT.pt [--kill-during-save-at STEP]``: resumes from CHECKPOINT_DIR when it
holds a checkpoint, writes the final parameters to OUT.pt. With ``--kill-during-save-at`` the process SIGKILLs itself
halfway through writing that step's checkpoint.
"""
import argparse
import os
import signal
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import bilevel
from bilevel import checkpoint as checkpoint_module

OUTER_STEPS = 12


class Train(bilevel.Level):
    def loss(self, batch):
        x, y = batch
        penalty = sum(torch.exp(self.outer.params["log_decay"]) * (w ** 2).sum() for w in self.params.values())
        return torch.nn.functional.cross_entropy(self(x), y) + penalty


class Validate(bilevel.Level):
    def loss(self, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.inner(x), y)


def build(checkpoint_dir):
    torch.manual_seed(0)
    x = torch.randn(96, 6)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 2))
    log_decay = torch.tensor(-4.0, requires_grad=True)
    train = Train(module=model, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
                  scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5),
                  data=DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True))
    validate = Validate(params={"log_decay": log_decay}, optimizer=lambda p: torch.optim.Adam(p, lr=0.1),
                        data=DataLoader(TensorDataset(x[64:], y[64:]), batch_size=8, shuffle=True))
    config = bilevel.EngineConfig(outer_steps=OUTER_STEPS, inner_steps=2, seed=1, progress=False, log_every=1,
                                  checkpoint_dir=checkpoint_dir, checkpoint_every=1, resume=True)
    return bilevel.Engine(train, validate, bilevel.methods.FiniteDifference(lr=1e-2), config,
                          on_step=lambda engine, step: time.sleep(0.15))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir")
    parser.add_argument("out")
    parser.add_argument("--kill-during-save-at", type=int, default=None)
    args = parser.parse_args()
    engine = build(args.checkpoint_dir)
    if args.kill_during_save_at is not None:
        real_save = torch.save

        def save_then_die(obj, file, *a, **k):
            if engine.step == args.kill_during_save_at:
                file.write(b"partial checkpoint bytes")
                file.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, file, *a, **k)

        checkpoint_module.torch.save = save_then_die
    engine.run()
    torch.save({name: p.detach().clone() for name, p in
                {**engine.inner.stored_params, **engine.outer.stored_params}.items()}, args.out)


if __name__ == "__main__":
    main()
