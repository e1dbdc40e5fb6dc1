"""The functional API on ridge regression with one L2 weight per feature, checked against the closed form.

inner g(w, lam) = 0.5 mean((X w - y)^2) + 0.5 sum_j lam_j w_j^2,  outer f(w) = 0.5 mean((X_v w - y_v)^2).
At w* = A^-1 X^T y / n with A = X^T X / n + diag(lam):  dF/dlam_j = -w*_j [A^-1 grad_w f(w*)]_j.

    python examples/functional_quickstart.py --seed 0
"""
import argparse

import torch

import bilevel


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="hypergradients of ridge regression vs the closed form")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unroll-steps", type=int, default=300, help="steps of the 'unroll' method")
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(args.seed)
    n, n_val, d = 80, 40, 5
    x, x_val = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n_val, d, generator=g, dtype=torch.float64)
    w_true = torch.randn(d, generator=g, dtype=torch.float64)
    y, y_val = x @ w_true + 0.5 * torch.randn(n, generator=g, dtype=torch.float64), x_val @ w_true
    lam = torch.full((d,), 0.1, dtype=torch.float64)

    def inner_loss(inner, outer, batch):
        xb, yb = batch
        return 0.5 * ((xb @ inner["w"] - yb) ** 2).mean() + 0.5 * (outer["lam"] * inner["w"] ** 2).sum()

    def outer_loss(inner, outer, batch):
        xb, yb = batch
        return 0.5 * ((xb @ inner["w"] - yb) ** 2).mean()

    a = x.T @ x / n + torch.diag(lam)
    w_star = torch.linalg.solve(a, x.T @ y / n)  # the inner optimum; implicit methods assume we are there
    exact = -w_star * torch.linalg.solve(a, x_val.T @ (x_val @ w_star - y_val) / n_val)
    step = 1.0 / float(torch.linalg.eigvalsh(a).max())
    methods = {"exact": "exact", "cg": "cg", "neumann": bilevel.methods.Neumann(iterations=200),
               "unroll": bilevel.methods.Unroll(steps=args.unroll_steps, lr=step),
               "finite_difference": bilevel.methods.FiniteDifference(lr=step), "first_order": "first_order"}
    errors = {}
    for name, method in methods.items():
        grads = bilevel.hypergradient(inner_loss, outer_loss, {"w": w_star}, {"lam": lam}, (x, y), (x_val, y_val),
                                      method)
        errors[name] = float((grads["lam"] - exact).norm() / exact.norm())
        print(f"{name:18s} relative error vs closed form: {errors[name]:.2e}")
    return {"closed_form": exact, "relative_errors": errors}


if __name__ == "__main__":
    main()
