"""Stochastic bilevel solvers side by side through the Engine, on the benchopt bilevel benchmark's offline problems.

Problems (minibatches at both levels, SGD at both levels with the same steps for every row):
  quadratic    generated: g_i = 0.5 w^T A w - w^T B x + c_i^T w, f_j = 0.5 ||w - t_j||^2 + 0.5 rho ||x||^2, the
               per-sample c_i, t_j a fixed vector plus centred noise of scale 0.5 (100 inner, 10 outer, 2,000
               samples a level, eigenvalues of A in [1, 10]); x* in closed form, so the figure is the relative
               error ||x - x*|| / ||x*||.
  logreg       regularisation selection: logistic regression with one log-penalty exp(x_j) per feature, data
               generated at ijcnn1's shape (50,000 x 22 training, 10,000 validation rows, 10% flipped labels); the
               figure is the validation loss on the full validation set.
  datacleaning scikit-learn's digits, 50% of the 1,000 training labels corrupted, one weight sigmoid(x_i) per
               training row, multinomial logistic regression inside; figures: validation loss and test accuracy.
Rows: ours SOBA (exact and finite-difference products), AmIGO, F2SA and, as baselines, the Engine with cg,
neumann and finite_difference (benchopt's own solvers run side by side with ours on the same data in
bench/stochastic_peers, docs/stochastic.md). Per row: the figure at the end, and per outer step (the median over the
run's steps): milliseconds (the inner step included), gradient passes (the inner step's included) and second-order
products (Hessian-vector and mixed).

    python bench/stochastic.py [--problems quadratic logreg datacleaning] [--steps 500] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

import bilevel

DT = torch.float64
ROWS = {
    "soba": bilevel.MethodSpec("soba"),
    "soba_fd": bilevel.MethodSpec("soba", {"hessian": "finite_difference"}),
    "amigo": bilevel.MethodSpec("amigo"),
    "f2sa": bilevel.MethodSpec("f2sa", {"multiplier": 100.0}),
    "bome": bilevel.MethodSpec("bome", {"decay": 1.0, "decay_start": 10}),
    "cg": bilevel.MethodSpec("cg", {"iterations": 10}),
    "neumann": bilevel.MethodSpec("neumann", {"iterations": 10}),
    "finite_difference": bilevel.MethodSpec("finite_difference"),
}


class FunctionalLevel(bilevel.Level):
    """A level whose loss is ``loss_fn(inner_params, outer_params, batch)``."""

    def __init__(self, loss_fn, role, **kwargs):
        super().__init__(**kwargs)
        self.loss_fn, self.role = loss_fn, role

    def loss(self, batch):
        inner, outer = (self.params, self.outer.params) if self.role == "inner" else (self.inner.params, self.params)
        return self.loss_fn(inner, outer, batch)


def loader(*tensors, batch_size):
    """Shuffled batches, indexed from the tensors a batch at a time (the batches of ``shuffle=True``, without its
    per-row collation)."""
    dataset = TensorDataset(*tensors)
    return DataLoader(dataset, sampler=BatchSampler(RandomSampler(dataset), batch_size, drop_last=False),
                      batch_size=None)


def quadratic(seed=0, n=100, m=10, samples=2000, rho=0.1):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))
    a = q @ torch.diag(torch.linspace(1.0, 10.0, n, dtype=DT)) @ q.T
    b = torch.randn(n, m, generator=gen, dtype=DT) / n ** 0.5
    def centred_around(centre):  # per-sample noise (scale 0.5) whose mean is exactly zero
        noise = 0.5 * torch.randn(samples, n, generator=gen, dtype=DT)
        return centre + noise - noise.mean(0)

    c = centred_around(torch.randn(n, generator=gen, dtype=DT))
    t = centred_around(torch.randn(n, generator=gen, dtype=DT))
    mapping = torch.linalg.solve(a, b)
    x_star = torch.linalg.solve(mapping.T @ mapping + rho * torch.eye(m, dtype=DT),
                                mapping.T @ (t.mean(0) + torch.linalg.solve(a, c.mean(0))))

    def inner_loss(w, x, batch):
        return 0.5 * w["w"] @ a @ w["w"] - w["w"] @ b @ x["x"] + (batch[0] @ w["w"]).mean()

    def outer_loss(w, x, batch):
        return 0.5 * ((w["w"] - batch[0]) ** 2).sum(1).mean() + 0.5 * rho * (x["x"] ** 2).sum()

    def figure(w, x):
        return {"rel_error": float((x["x"] - x_star).norm() / x_star.norm())}

    return dict(inner_loss=inner_loss, outer_loss=outer_loss, figure=figure, inner={"w": torch.zeros(n, dtype=DT)},
                outer={"x": torch.zeros(m, dtype=DT)}, inner_data=(c,), outer_data=(t,), inner_lr=0.1, outer_lr=0.5,
                x_star=x_star, matrices={"a": a, "b": b, "rho": rho})


def logreg(seed=0, train=50_000, validation=10_000, features=22):
    gen = torch.Generator().manual_seed(seed)
    truth = torch.randn(features, generator=gen, dtype=DT)
    rows = torch.randn(train + validation, features, generator=gen, dtype=DT)
    labels = torch.sign(rows @ truth)
    labels[torch.rand(len(labels), generator=gen, dtype=DT) < 0.1] *= -1
    validation_rows, validation_labels = rows[train:], labels[train:]

    def inner_loss(w, x, batch):
        features_, labels_ = batch
        return F.softplus(-labels_ * (features_ @ w["w"])).mean() + 0.5 * (torch.exp(x["x"]) * w["w"] ** 2).sum()

    def outer_loss(w, x, batch):
        features_, labels_ = batch
        return F.softplus(-labels_ * (features_ @ w["w"])).mean()

    def figure(w, x):
        return {"val_loss": float(outer_loss(w, x, (validation_rows, validation_labels)))}

    return dict(inner_loss=inner_loss, outer_loss=outer_loss, figure=figure,
                inner={"w": torch.zeros(features, dtype=DT)}, outer={"x": torch.full((features,), -2.0, dtype=DT)},
                inner_data=(rows[:train], labels[:train]), outer_data=(validation_rows, validation_labels),
                inner_lr=0.5, outer_lr=0.5)


def datacleaning(seed=0, train=1000, validation=400, corrupted=0.5):
    """scikit-learn's digits (64 features, 10 classes; the 1,797 rows minus train and validation are test rows)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(digits.target), generator=gen)
    rows = torch.tensor(digits.data, dtype=DT)[order] / 16.0
    return _datacleaning(rows, torch.tensor(digits.target)[order], 10, gen, train, validation, corrupted)


def datacleaning_wide(seed=0, features=1000, classes=100, train=5000, validation=2000, test=2000, corrupted=0.5):
    """Generated at 1e5 inner parameters (1,000 features x 100 classes): each class a Gaussian around its own mean,
    rows of norm about 3 (as digits' /16 rows), so the same steps suit it; the timing problem whose step is compute,
    not overhead."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (train + validation + test,), generator=gen)
    means = torch.randn(classes, features, generator=gen, dtype=DT)
    noise = 2.0  # a row's squared norm is about (1 + noise^2) * features before scaling to norm 3
    rows = means[labels] + noise * torch.randn(len(labels), features, generator=gen, dtype=DT)
    rows = rows * 3 / ((1 + noise ** 2) * features) ** 0.5
    return _datacleaning(rows, labels, classes, gen, train, validation, corrupted)


def _datacleaning(rows, labels, classes, gen, train, validation, corrupted):
    """Multinomial logistic regression on ``train`` rows whose labels are ``corrupted`` at random, one weight
    sigmoid(x_i) per training row; the next ``validation`` rows are the outer data, the rest the test set."""
    noisy = labels[:train].clone()
    flip = torch.rand(train, generator=gen) < corrupted
    noisy[flip] = torch.randint(0, classes, (int(flip.sum()),), generator=gen)
    index = torch.arange(train)
    val_rows, val_labels = rows[train:train + validation], labels[train:train + validation]
    test_rows, test_labels = rows[train + validation:], labels[train + validation:]

    def logits(w, features_):
        return features_ @ w["W"] + w["b"]

    def inner_loss(w, x, batch):
        features_, labels_, rows_ = batch
        weights = torch.sigmoid(x["x"][rows_])
        losses = F.cross_entropy(logits(w, features_), labels_, reduction="none")
        return (weights * losses).mean() + 1e-3 * (w["W"] ** 2).sum()

    def outer_loss(w, x, batch):
        features_, labels_ = batch
        return F.cross_entropy(logits(w, features_), labels_)

    def figure(w, x):
        accuracy = (logits(w, test_rows).argmax(1) == test_labels).double().mean()
        return {"val_loss": float(outer_loss(w, x, (val_rows, val_labels))), "test_acc": float(accuracy)}

    inner = {"W": torch.zeros(rows.shape[1], classes, dtype=DT), "b": torch.zeros(classes, dtype=DT)}
    return dict(inner_loss=inner_loss, outer_loss=outer_loss, figure=figure, inner=inner,
                outer={"x": torch.zeros(train, dtype=DT)}, inner_data=(rows[:train], noisy, index),
                outer_data=(val_rows, val_labels), inner_lr=0.5, outer_lr=50.0)


PROBLEMS = {"quadratic": quadratic, "logreg": logreg, "datacleaning": datacleaning}


def run_row(problem, spec, steps, batch_size, seed=0):
    inner = FunctionalLevel(problem["inner_loss"], "inner",
                            params={k: torch.nn.Parameter(v.clone()) for k, v in problem["inner"].items()},
                            optimizer=lambda p: torch.optim.SGD(p, lr=problem["inner_lr"]),
                            data=loader(*problem["inner_data"], batch_size=batch_size))
    outer = FunctionalLevel(problem["outer_loss"], "outer",
                            params={k: torch.nn.Parameter(v.clone()) for k, v in problem["outer"].items()},
                            optimizer=lambda p: torch.optim.SGD(p, lr=problem["outer_lr"]),
                            data=loader(*problem["outer_data"], batch_size=batch_size))
    config = bilevel.EngineConfig(outer_steps=steps, inner_steps=1, seed=seed, progress=False, log_every=steps)
    engine = bilevel.Engine(inner, outer, method=spec, config=config)
    times, passes, products = [], [], []
    last = [time.perf_counter()]

    def on_step(engine, step):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        diagnostics = engine.last_result.diagnostics
        passes.append(1 + diagnostics.get("gradient_evaluations", 0))  # the inner step's pass, then the method's
        products.append(diagnostics.get("hvp", 0))

    engine.on_step = on_step
    engine.run()
    params = lambda level: {k: v.detach() for k, v in level.stored_params.items()}  # noqa: E731
    return {**problem["figure"](params(engine.inner), params(engine.outer)),
            "ms_per_step": 1e3 * statistics.median(times), "passes": statistics.median(passes),
            "hvp": statistics.median(products)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.problems:
        problem = PROBLEMS[name]()
        print(f"\n### {name} ({args.steps} outer steps, batch {args.batch_size}, inner lr {problem['inner_lr']}, "
              f"outer lr {problem['outer_lr']})\n")
        results = {row: run_row(problem, ROWS[row], args.steps, args.batch_size) for row in args.rows}
        figures = [k for k in next(iter(results.values())) if k not in ("ms_per_step", "passes", "hvp")]
        print("| row | " + " | ".join(figures) + " | ms / outer step | passes / step | products / step |")
        print("|---|" + "---|" * (len(figures) + 3))
        for row, result in results.items():
            cells = [f"{result[k]:.4g}" for k in figures]
            print(f"| {row} | " + " | ".join(cells) + f" | {result['ms_per_step']:.2f} | {result['passes']:.1f} | "
                  f"{result['hvp']:.1f} |")


if __name__ == "__main__":
    main()
