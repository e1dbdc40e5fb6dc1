"""Data hyper-cleaning: learn one weight per training example so that corrupted labels stop hurting.

Data: scikit-learn's bundled digits (1,797 8x8 images, 10 classes), split into train / clean validation / test, with
40% of the training labels replaced by a different class chosen uniformly at random (seeded). The bilevel problem
(Franceschi et al., 2017):

    inner:  W*(a) = argmin_W  sum_i s_i CE(W; x_i, y~_i) / sum_i s_i + 0.5 * weight_decay * ||W||^2,   s_i = sigmoid(a_i)
    outer:  min_a  CE_val(W*(a))            (on clean validation labels)

The inner model is a linear softmax classifier. The Engine alternates real optimizer steps of the classifier with
hypergradient steps of the logits ``a``; the default method is implicit differentiation by conjugate gradient: the
inner problem is strongly convex (weight decay) and tracked closely by warm-started inner steps, which is where the
implicit function theorem is accurate, and each hypergradient costs a few Hessian-vector products instead of a
graph through many unrolled steps. ``--method unroll`` (with ``--unroll-steps``) or any other registered name works
too. Afterwards the classifier is refitted to convergence with the learned weights and compared with the unweighted
fit and with an oracle that trains on the clean examples only.

    python examples/hyper_cleaning.py --outer-steps 200 --method cg --seed 0
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import bilevel

DTYPE = torch.float64
CLASSES = 10


def load_splits(seed: int, corruption: float, n_train: int = 800, n_val: int = 300):
    """Train (with corrupted labels), clean validation and test tensors, plus the mask of corrupted examples."""
    data = load_digits()
    x = data.data / 16.0  # pixel intensities 0..16
    x_train, x_rest, y_train, y_rest = train_test_split(x, data.target, train_size=n_train, random_state=seed,
                                                        stratify=data.target)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, train_size=n_val, random_state=seed,
                                                    stratify=y_rest)
    rng = np.random.default_rng(seed)
    corrupted = np.zeros(n_train, dtype=bool)
    corrupted[rng.choice(n_train, size=int(round(corruption * n_train)), replace=False)] = True
    noisy = y_train.copy()
    # A shift of 1..9 classes modulo 10 moves each corrupted label to another class, uniformly.
    noisy[corrupted] = (y_train[corrupted] + rng.integers(1, CLASSES, size=corrupted.sum())) % CLASSES
    mean = x_train.mean(0)
    as_tensors = lambda x, y: (torch.tensor(x - mean, dtype=DTYPE), torch.tensor(y, dtype=torch.long))
    return {"train": as_tensors(x_train, noisy), "val": as_tensors(x_val, y_val), "test": as_tensors(x_test, y_test),
            "corrupted": torch.tensor(corrupted)}


def weighted_loss(logits, labels, weights, parameters, weight_decay):
    """Weighted mean cross-entropy plus L2 on the classifier (which makes the inner problem strongly convex)."""
    losses = F.cross_entropy(logits, labels, reduction="none")
    penalty = sum((p ** 2).sum() for p in parameters)
    return (weights * losses).sum() / weights.sum() + 0.5 * weight_decay * penalty


class Training(bilevel.Level):
    """Inner level: the classifier on the noisy training set, each example weighted by sigmoid(a_i)."""

    def __init__(self, weight_decay: float, **kwargs):
        super().__init__(**kwargs)
        self.weight_decay = weight_decay

    def loss(self, batch):
        x, y = batch
        weights = torch.sigmoid(self.outer.params["logits"])
        return weighted_loss(self(x), y, weights, self.params.values(), self.weight_decay)


class CleanValidation(bilevel.Level):
    """Outer level: cross-entropy of the classifier on the clean validation split."""

    def loss(self, batch):
        x, y = batch
        return F.cross_entropy(self.inner(x), y)


def fit(x, y, weights, weight_decay) -> torch.nn.Linear:
    """The classifier trained to convergence (L-BFGS, float64) on examples weighted by ``weights``."""
    model = torch.nn.Linear(x.shape[1], CLASSES, dtype=DTYPE)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = weighted_loss(model(x), y, weights, model.parameters(), weight_decay)
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


@torch.no_grad()
def accuracy(model, split) -> float:
    x, y = split
    return float((model(x).argmax(-1) == y).double().mean())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outer-steps", type=int, default=200, help="hypergradient steps on the example weights")
    parser.add_argument("--inner-steps", type=int, default=10, help="inner optimizer steps per outer step")
    parser.add_argument("--warmup-steps", type=int, default=200, help="inner steps before the first outer step")
    parser.add_argument("--method", default="cg", help=f"hypergradient method, one of {bilevel.methods.names()}")
    parser.add_argument("--unroll-steps", type=int, default=10, help="differentiable steps for --method unroll")
    parser.add_argument("--virtual-lr", type=float, default=0.5,
                        help="SGD step size of the differentiated steps of unroll and finite_difference")
    parser.add_argument("--outer-lr", type=float, default=0.1, help="Adam learning rate of the weight logits")
    parser.add_argument("--inner-lr", type=float, default=0.05, help="Adam learning rate of the classifier")
    parser.add_argument("--weight-decay", type=float, default=1e-3, help="L2 on the classifier")
    parser.add_argument("--corruption", type=float, default=0.4, help="fraction of training labels corrupted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (small tensors: 1 is fastest)")
    return parser.parse_args(argv)


def make_method(args):
    """The method by name, with virtual SGD steps of size --virtual-lr wherever it models the inner step (a fixed
    choice here, not the Adam rate of the real inner steps): an unroll takes its step count from the flags."""
    counts_steps = bilevel.methods.get(args.method).main_count == "steps"
    unroll = {"steps": args.unroll_steps, "optimizer": "sgd"} if counts_steps else {}
    return bilevel.methods.build(args.method, inner_lr=args.virtual_lr, **unroll)


def main(argv=None) -> dict:
    args = parse_args(argv)
    previous_threads = torch.get_num_threads()
    # Tensors here are small: thread start-up costs more than it saves, badly so on a busy machine.
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(previous_threads)


def run(args) -> dict:
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    splits = load_splits(args.seed, args.corruption)
    x, y = splits["train"]
    corrupted = splits["corrupted"]

    model = torch.nn.Linear(x.shape[1], CLASSES, dtype=DTYPE)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    logits = torch.nn.Parameter(torch.zeros(len(y), dtype=DTYPE))
    trajectory = []

    def on_validate(engine):
        acc = accuracy(model, splits["val"])
        trajectory.append((engine.step, acc))
        return {"acc": acc}  # the Engine logs it as "val_acc"

    engine = bilevel.Engine(
        inner=Training(args.weight_decay, module=model, optimizer=lambda ps: torch.optim.Adam(ps, lr=args.inner_lr),
                       data=[splits["train"]]),
        outer=CleanValidation(params={"logits": logits},
                              optimizer=lambda ps: torch.optim.Adam(ps, lr=args.outer_lr), data=[splits["val"]]),
        method=make_method(args),
        config=bilevel.EngineConfig(outer_steps=args.outer_steps, inner_steps=args.inner_steps,
                                    warmup_inner_steps=args.warmup_steps, validate_every=max(1, args.outer_steps // 5),
                                    log_every=10, seed=args.seed, progress=False),
        on_validate=on_validate)
    engine.run()

    weights = torch.sigmoid(logits.detach())
    unweighted = fit(x, y, torch.ones_like(weights), args.weight_decay)
    cleaned = fit(x, y, weights, args.weight_decay)
    oracle = fit(x, y, (~corrupted).to(DTYPE), args.weight_decay)
    n_corrupted = int(corrupted.sum())
    lowest = torch.argsort(weights)[:n_corrupted]
    result = {
        "method": engine.method.name,
        "unweighted": {"val_acc": accuracy(unweighted, splits["val"]), "test_acc": accuracy(unweighted, splits["test"])},
        "learned": {"val_acc": accuracy(cleaned, splits["val"]), "test_acc": accuracy(cleaned, splits["test"])},
        "clean_only": {"val_acc": accuracy(oracle, splits["val"]), "test_acc": accuracy(oracle, splits["test"])},
        "mean_weight_corrupted": float(weights[corrupted].mean()),
        "mean_weight_clean": float(weights[~corrupted].mean()),
        # Of the n_corrupted examples with the lowest weights, the share that really is corrupted.
        "detection_precision": float(corrupted[lowest].double().mean()),
        "val_acc_during_training": trajectory,
        "runtime_s": time.perf_counter() - started,
    }
    report(result, args, n_corrupted, len(y))
    return result


def report(result: dict, args, n_corrupted: int, n_train: int) -> None:
    print(f"hyper-cleaning on digits: {n_corrupted} of {n_train} training labels corrupted, method={result['method']}, "
          f"{args.outer_steps} outer steps, seed {args.seed}")
    print(f"{'classifier refitted with':34s} {'val acc':>8s} {'test acc':>9s}")
    for label, key in (("uniform weights (baseline)", "unweighted"), ("learned weights", "learned"),
                       ("clean examples only (oracle)", "clean_only")):
        print(f"{label:34s} {result[key]['val_acc']:8.3f} {result[key]['test_acc']:9.3f}")
    print("validation accuracy during training: "
          + ", ".join(f"step {step}: {acc:.3f}" for step, acc in result["val_acc_during_training"]))
    print(f"mean weight: corrupted {result['mean_weight_corrupted']:.3f}, clean {result['mean_weight_clean']:.3f}; "
          f"corrupted share of the {n_corrupted} lowest-weighted examples: {result['detection_precision']:.3f}")
    print(f"runtime {result['runtime_s']:.1f} s")


if __name__ == "__main__":
    main()
