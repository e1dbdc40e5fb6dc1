"""A real task: per-feature L2 weights of logistic regression on scikit-learn's bundled breast-cancer data, learned
by the Engine with CG hypergradients, against fixed scalar L2 weights. Every model compared is refit to convergence
(L-BFGS) with its L2 weights, so the comparison is between hyperparameters, not between training runs."""
import math

import pytest
import torch
import torch.nn.functional as F

import bilevel

datasets = pytest.importorskip("sklearn.datasets")
DT = torch.float64
FIXED = (1e-3, 1e-2, 1e-1, 1.0)
INITIAL = 1.0


def splits():
    """Train 150 / validation 150 / test 269 examples, standardized with training statistics."""
    X, y = datasets.load_breast_cancer(return_X_y=True)
    X, y = torch.tensor(X, dtype=DT), torch.tensor(y, dtype=DT)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    parts = order[:150], order[150:300], order[300:]
    mean, std = X[parts[0]].mean(0), X[parts[0]].std(0)
    X = (X - mean) / std
    return [(X[p], y[p]) for p in parts]


def log_loss(params, data):
    X, y = data
    logits = X @ params["w"] + params["b"]
    return (F.softplus(logits) - y * logits).mean()


def fit(l2, train):
    """Minimize the L2-regularized training loss to convergence."""
    params = {"w": torch.zeros(train[0].shape[1], dtype=DT, requires_grad=True),
              "b": torch.zeros((), dtype=DT, requires_grad=True)}
    optimizer = torch.optim.LBFGS(list(params.values()), max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = log_loss(params, train) + 0.5 * (l2 * params["w"] ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return {k: v.detach() for k, v in params.items()}


class Training(bilevel.Level):
    def loss(self, batch):
        l2 = torch.exp(self.outer.params["log_l2"])
        return log_loss(self.params, batch) + 0.5 * (l2 * self.params["w"] ** 2).sum()


class Validation(bilevel.Level):
    def loss(self, batch):
        return log_loss(self.inner.params, batch)


def test_learned_per_feature_l2_beats_fixed_l2():
    train, val, test = splits()
    d = train[0].shape[1]
    inner = Training(params={"w": torch.nn.Parameter(torch.zeros(d, dtype=DT)),
                             "b": torch.nn.Parameter(torch.zeros((), dtype=DT))},
                     optimizer=lambda p: torch.optim.Adam(p, lr=0.05), data=[train])
    outer = Validation(params={"log_l2": torch.nn.Parameter(torch.full((d,), math.log(INITIAL), dtype=DT))},
                       optimizer=lambda p: torch.optim.Adam(p, lr=0.1), data=[val])
    engine = bilevel.Engine(inner, outer, method=bilevel.methods.ConjugateGradient(iterations=30, tol=1e-8),
                            config=bilevel.EngineConfig(outer_steps=60, inner_steps=30, warmup_inner_steps=200,
                                                        log_every=10, progress=False))
    engine.run()
    learned = fit(torch.exp(outer.stored_params["log_l2"].detach()), train)
    fixed = {l2: fit(torch.full((d,), l2, dtype=DT), train) for l2 in FIXED}
    best_fixed_val = min(float(log_loss(p, val)) for p in fixed.values())
    # the hyperparameters were chosen on validation: they must beat every fixed scalar there
    assert float(log_loss(learned, val)) < best_fixed_val
    # and generalise: on held-out test data they beat the fixed initial value they started from
    assert float(log_loss(learned, test)) < 0.5 * float(log_loss(fixed[INITIAL], test))
    losses = [value for _, value in engine.history.series("outer_loss")]
    assert losses[-1] < losses[0]
