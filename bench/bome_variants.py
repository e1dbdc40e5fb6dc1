"""BOME's value-function estimate, warm-started (ours) or restarted from w at every step (the paper's Algorithm 1).

Deterministic float64 NumPy recursion on a quadratic bilevel problem with x* in closed form:
g(w, x) = 1/2 w'Aw - w'Bx (eigenvalues of A in [1, 4]), f(w, x) = 1/2 ||w - t||^2 + rho/2 ||x||^2. Per step, both
variants take the BOME direction grad f + lambda grad q with q = g(w, x) - g(theta, x) and eta = 0.5, a step 1/L
(times min(1, 10/k) with --decay); they differ in theta: ours continues its own gradient descent from the previous
step (as bilevel's ``bome`` does with the Engine's inner parameters), the paper's starts T steps from w each time.
Prints the relative error of x after 1e2 to 1e5 steps.

    python bench/bome_variants.py
"""
from __future__ import annotations

import numpy as np

CHECKPOINTS = (100, 1_000, 10_000, 100_000)
EIGENVALUES = (1.0, 4.0)  # the inner Hessian's spectrum; its top is the inner steps' Lipschitz constant


def problem(seed=0, n=10, m=4, rho=0.5):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = q @ np.diag(np.linspace(*EIGENVALUES, n)) @ q.T
    b, t = rng.standard_normal((n, m)) / np.sqrt(n), rng.standard_normal(n)
    mapping = np.linalg.solve(a, b)
    x_star = np.linalg.solve(mapping.T @ mapping + rho * np.eye(m), mapping.T @ t)
    return a, b, t, rho, x_star


def run(restart: bool, inner_steps: int, decay: bool, eta=0.5, seed=0) -> dict:
    a, b, t, rho, x_star = problem(seed)
    lipschitz = EIGENVALUES[1]
    w, x = np.zeros(len(a)), np.zeros(b.shape[1])
    theta = w.copy()
    errors = {}
    for k in range(1, CHECKPOINTS[-1] + 1):
        theta = w.copy() if restart else theta
        for _ in range(inner_steps):
            theta = theta - (a @ theta - b @ x) / lipschitz
        q_w, q_x = a @ w - b @ x, -b.T @ (w - theta)
        f_w, f_x = w - t, rho * x
        squared = q_w @ q_w + q_x @ q_x
        multiplier = max(eta * squared - (f_w @ q_w + f_x @ q_x), 0.0) / squared if squared > 0 else 0.0
        step = (min(1.0, 10 / k) if decay else 1.0) / lipschitz
        w, x = w - step * (f_w + multiplier * q_w), x - step * (f_x + multiplier * q_x)
        if k in CHECKPOINTS:
            errors[k] = float(np.linalg.norm(x - x_star) / np.linalg.norm(x_star))
    return errors


def main():
    print("| theta | T | step | " + " | ".join(f"{k:,} steps" for k in CHECKPOINTS) + " |")
    print("|---|---|---|" + "---|" * len(CHECKPOINTS))
    for restart in (False, True):
        for inner_steps in (1, 10):
            for decay in (False, True):
                errors = run(restart, inner_steps, decay)
                print(f"| {'restarted from w (paper)' if restart else 'warm-started (ours)'} | {inner_steps} | "
                      f"{'1/L min(1, 10/k)' if decay else '1/L'} | "
                      + " | ".join(f"{errors[k]:.1e}" for k in CHECKPOINTS) + " |")


if __name__ == "__main__":
    main()
