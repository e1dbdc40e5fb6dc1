"""Learn one L2 weight per feature of a logistic regression by hypergradient descent.

Data: scikit-learn's bundled breast-cancer set (569 tumours, 30 features), standardized with training statistics and
split into train / validation / test. The bilevel problem:

    inner:  w*(lam) = argmin_w  CE_train(w) + 0.5 * sum_j exp(loglam_j) * w_j^2
    outer:  min_loglam  CE_val(w*(lam))

The Engine alternates real optimizer steps of the logistic regression with hypergradient steps of ``loglam``
(implicit differentiation with conjugate gradient by default; any registered method works through ``--method``).
Afterwards every candidate is refitted to convergence and compared: the starting lambda, the best fixed scalar lambda
of a small grid (selected on the validation split) and the learned per-feature lambdas. The test split is only
ever used for reporting.

    python examples/logistic_l2.py --outer-steps 60 --method cg --seed 0
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

import bilevel

DTYPE = torch.float64
GRID = [10.0 ** k for k in range(-5, 2)] + [3 * 10.0 ** k for k in range(-5, 1)]


def load_splits(seed: int, train_fraction: float = 0.3):
    """(x, y) tensors per split: train_fraction for training, the rest halved into validation and test."""
    data = load_breast_cancer()
    x_train, x_rest, y_train, y_rest = train_test_split(data.data, data.target, train_size=train_fraction,
                                                        random_state=seed, stratify=data.target)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=seed,
                                                    stratify=y_rest)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-12
    as_tensors = lambda x, y: (torch.tensor((x - mean) / std, dtype=DTYPE), torch.tensor(y, dtype=DTYPE))
    return {"train": as_tensors(x_train, y_train), "val": as_tensors(x_val, y_val),
            "test": as_tensors(x_test, y_test), "feature_names": list(data.feature_names)}


class Training(bilevel.Level):
    """Inner level: training cross-entropy plus the per-feature L2 penalty set by the outer level."""

    def loss(self, batch):
        x, y = batch
        penalty = self.outer.params["loglam"].exp() * self.params["weight"].squeeze(0) ** 2
        return F.binary_cross_entropy_with_logits(self(x).squeeze(-1), y) + 0.5 * penalty.sum()


class Validation(bilevel.Level):
    """Outer level: validation cross-entropy of the inner model (run with the inner parameters in play)."""

    def loss(self, batch):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self.inner(x).squeeze(-1), y)


def fit(x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor) -> torch.nn.Linear:
    """Logistic regression trained to convergence (L-BFGS, float64) with penalty 0.5 * sum_j lam_j w_j^2."""
    model = torch.nn.Linear(x.shape[1], 1, dtype=DTYPE)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-10,
                                  tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
        loss = loss + 0.5 * (lam * model.weight.squeeze(0) ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


@torch.no_grad()
def evaluate(model: torch.nn.Module, splits) -> dict:
    """Cross-entropy and accuracy on the validation and test splits."""
    out = {}
    for split in ("val", "test"):
        x, y = splits[split]
        logits = model(x).squeeze(-1)
        out[f"{split}_loss"] = float(F.binary_cross_entropy_with_logits(logits, y))
        out[f"{split}_acc"] = float(((logits > 0).to(DTYPE) == y).to(DTYPE).mean())
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outer-steps", type=int, default=60, help="hypergradient steps on the lambdas")
    parser.add_argument("--inner-steps", type=int, default=20, help="inner optimizer steps per outer step")
    parser.add_argument("--warmup-steps", type=int, default=300, help="inner steps before the first outer step")
    parser.add_argument("--method", default="cg", help=f"hypergradient method, one of {bilevel.methods.names()}")
    parser.add_argument("--outer-lr", type=float, default=0.1, help="Adam learning rate on log(lambda)")
    parser.add_argument("--inner-lr", type=float, default=0.05, help="Adam learning rate of the logistic regression")
    parser.add_argument("--init-lambda", type=float, default=1e-3, help="starting lambda of every feature")
    parser.add_argument("--train-fraction", type=float, default=0.3,
                        help="share of the data used for training; the rest is halved into validation and test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny tensors: 1 is fastest)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    previous_threads = torch.get_num_threads()
    # Tensors here have a few hundred entries: thread start-up costs more than it saves, badly so on a busy machine.
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(previous_threads)


def run(args) -> dict:
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    splits = load_splits(args.seed, args.train_fraction)
    n_features = splits["train"][0].shape[1]

    model = torch.nn.Linear(n_features, 1, dtype=DTYPE)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    loglam = torch.nn.Parameter(torch.full((n_features,), math.log(args.init_lambda), dtype=DTYPE))
    engine = bilevel.Engine(
        inner=Training(module=model, optimizer=lambda ps: torch.optim.Adam(ps, lr=args.inner_lr),
                       data=[splits["train"]]),
        outer=Validation(params={"loglam": loglam}, optimizer=lambda ps: torch.optim.Adam(ps, lr=args.outer_lr),
                         data=[splits["val"]]),
        method=args.method,
        config=bilevel.EngineConfig(outer_steps=args.outer_steps, inner_steps=args.inner_steps,
                                    warmup_inner_steps=args.warmup_steps, log_every=10, seed=args.seed,
                                    progress=False))
    engine.run()

    x, y = splits["train"]
    before = evaluate(fit(x, y, torch.full((n_features,), args.init_lambda, dtype=DTYPE)), splits)
    grid = {lam: evaluate(fit(x, y, torch.full((n_features,), lam, dtype=DTYPE)), splits) for lam in GRID}
    best_lam = min(grid, key=lambda lam: grid[lam]["val_loss"])  # selected on validation, never on test
    learned_lam = loglam.detach().exp()
    learned = evaluate(fit(x, y, learned_lam), splits)
    order = torch.argsort(learned_lam, descending=True).tolist()
    names = splits["feature_names"]
    result = {
        "method": engine.method.name, "before": before, "best_scalar_lambda": best_lam, "best_scalar": grid[best_lam],
        "learned": learned,
        "most_regularized": [(names[j], float(learned_lam[j])) for j in order[:3]],
        "least_regularized": [(names[j], float(learned_lam[j])) for j in order[-3:][::-1]],
        "outer_loss_history": engine.history.series("outer_loss"),
        "runtime_s": time.perf_counter() - started,
    }
    report(result, args)
    return result


def report(result: dict, args) -> None:
    print(f"per-feature L2 for logistic regression on breast cancer, method={result['method']}, "
          f"{args.outer_steps} outer steps, seed {args.seed}")
    print(f"{'':32s} {'val loss':>9s} {'val acc':>8s} {'test loss':>10s} {'test acc':>9s}")
    rows = [(f"start: lambda={args.init_lambda:g} for all", result["before"]),
            (f"best scalar on val: lambda={result['best_scalar_lambda']:g}", result["best_scalar"]),
            ("learned per-feature lambdas", result["learned"])]
    for label, m in rows:
        print(f"{label:32s} {m['val_loss']:9.4f} {m['val_acc']:8.3f} {m['test_loss']:10.4f} {m['test_acc']:9.3f}")
    print("most regularized features:  " + ", ".join(f"{n} ({v:.3g})" for n, v in result["most_regularized"]))
    print("least regularized features: " + ", ".join(f"{n} ({v:.3g})" for n, v in result["least_regularized"]))
    print(f"runtime {result['runtime_s']:.1f} s")


if __name__ == "__main__":
    main()
