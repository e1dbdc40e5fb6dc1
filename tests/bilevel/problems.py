"""Bilevel problems with hand-derived derivatives, and reference hypergradients built from them (float64).

Each problem gives the inner loss g(w, x) and outer loss f(w, x) as the library sees them (dicts of tensors), and
independently, by hand (no autograd): grad_w g, grad_x g, the Hessian H = d^2 g / dw^2, the mixed Jacobian
J = d(grad_w g)/dx (n x m), grad_w f, grad_x f and the inner solution w*(x). The references below combine only those:

    implicit:           grad_x f - J^T H^-1 grad_w f                      at w*(x)
    K-step SGD unroll:  D_{t+1} = (I - eta H_t) D_t - eta J_t, D_0 = 0;   grad_x f(w_K) + D_K^T grad_w f(w_K)
    identity implicit:  grad_x f - J^T grad_w f                           (implicit with H^-1 replaced by I)
    first order:        grad_x f
    SOBA at state v:    grad_x f + J^T v
    AmIGO-GD from q_0:  q_{m+1} = q_m - beta (H q_m - grad_w f), M times;   grad_x f - J^T q_M     at w*(x)
    F2SA at state y:    y <- y - (lr/lambda)(grad_w f(y) + lambda grad_w g(y)), T times;
                        grad_x f(y) + lambda (grad_x g(y) - grad_x g(w))
    BOME at state u:    grad q = (grad_w g(u), grad_x g(u) - grad_x g(w)),
                        lambda = max(eta |grad q|^2 - <grad f(u), grad q>, 0) / |grad q|^2;
                        grad_x f(u) + lambda grad_x q
"""
from __future__ import annotations

import math

import torch

DT = torch.float64


def _cat(params):
    return torch.cat([v.reshape(-1) for v in params.values()])


class Problem:
    """Shared plumbing: flat vectors <-> parameter dicts, and the references."""

    name = ""
    bilinear_coupling = True  # grad_x g is at most quadratic in w: central differences of it are exact
    inner_split = None        # names and sizes of the inner tensors (a split exercises multi-tensor dicts)
    outer_shape = None

    # parameter dicts
    def inner_params(self, w):
        out, offset = {}, 0
        for name, size in self.inner_split:
            out[name] = w[offset:offset + size].clone()
            offset += size
        return out

    def outer_params(self, x):
        return {"x": x.clone().reshape(self.outer_shape)}

    @staticmethod
    def flat(params):
        return _cat(params)

    def g(self, inner, outer, batch):
        return self.inner_value(_cat(inner), _cat(outer), batch)

    def f(self, inner, outer, batch):
        return self.outer_value(_cat(inner), _cat(outer), batch)

    # references
    def implicit(self, x):
        w = self.w_star(x)
        gw, gx = self.outer_grad_w(w, x), self.outer_grad_x(w, x)
        return gx - self.mixed(w, x, self.inner_batch).T @ torch.linalg.solve(self.hessian(w, x, self.inner_batch), gw)

    def unroll(self, w, x, steps, lr, batches=None):
        batches = batches or [self.inner_batch] * steps
        d = torch.zeros(w.numel(), x.numel(), dtype=DT)
        eye = torch.eye(w.numel(), dtype=DT)
        for batch in batches:
            d = (eye - lr * self.hessian(w, x, batch)) @ d - lr * self.mixed(w, x, batch)
            w = w - lr * self.inner_grad(w, x, batch)
        return self.outer_grad_x(w, x) + d.T @ self.outer_grad_w(w, x)

    def identity_implicit(self, w, x):
        return self.outer_grad_x(w, x) - self.mixed(w, x, self.inner_batch).T @ self.outer_grad_w(w, x)

    def first_order(self, w, x):
        return self.outer_grad_x(w, x)

    def soba(self, w, x, v):
        return self.outer_grad_x(w, x) + self.mixed(w, x, self.inner_batch).T @ v

    def amigo(self, x, q, iterations, step):
        w = self.w_star(x)
        gw, hessian = self.outer_grad_w(w, x), self.hessian(w, x, self.inner_batch)
        for _ in range(iterations):
            q = q - step * (hessian @ q - gw)
        return self.outer_grad_x(w, x) - self.mixed(w, x, self.inner_batch).T @ q

    def f2sa(self, w, x, y, multiplier, steps, lr):
        for _ in range(steps):
            y = y - lr / multiplier * (self.outer_grad_w(y, x) + multiplier * self.inner_grad(y, x, self.inner_batch))
        return self.outer_grad_x(y, x) + multiplier * (self.inner_grad_x(y, x, self.inner_batch)
                                                       - self.inner_grad_x(w, x, self.inner_batch))

    def bome(self, w, x, u, eta):
        f_w, f_x = self.outer_grad_w(u, x), self.outer_grad_x(u, x)
        q_w = self.inner_grad(u, x, self.inner_batch)
        q_x = self.inner_grad_x(u, x, self.inner_batch) - self.inner_grad_x(w, x, self.inner_batch)
        squared = q_w @ q_w + q_x @ q_x
        multiplier = max(float(eta * squared - (f_w @ q_w + f_x @ q_x)), 0.0) / float(squared)
        return f_x + multiplier * q_x


class ValidationMSE(Problem):
    """Outer level shared by the regression fixtures: half the validation MSE, no direct dependence on x."""

    def outer_value(self, w, x, batch):
        X, y = batch
        return 0.5 * ((X @ w - y) ** 2).mean()

    def outer_grad_w(self, w, x):
        X, y = self.outer_batch
        return X.T @ (X @ w - y) / len(y)

    def outer_grad_x(self, w, x):
        return torch.zeros_like(x)


class Ridge(ValidationMSE):
    """g = 0.5/n ||X w - y||^2 + 0.5 sum_j lambda_j w_j^2 (one lambda per feature, or one shared scalar);
    f = 0.5/m ||X_val w - y_val||^2. Closed form: d F / d lambda_j = -w*_j [A^-1 grad_w f]_j, A = X^T X / n + diag(lambda).
    """

    def __init__(self, per_feature: bool, n=40, m=30, d=5, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.per_feature = per_feature
        self.name = "ridge_per_feature" if per_feature else "ridge_scalar"
        self.d = d
        w_true = torch.randn(d, generator=gen, dtype=DT)
        X = torch.randn(n, d, generator=gen, dtype=DT)
        Xv = torch.randn(m, d, generator=gen, dtype=DT)
        self.inner_batch = (X, X @ w_true + 0.5 * torch.randn(n, generator=gen, dtype=DT))
        self.outer_batch = (Xv, Xv @ w_true + 0.5 * torch.randn(m, generator=gen, dtype=DT))
        self.inner_split = [("w", d)] if per_feature else [("w_head", 2), ("w_tail", d - 2)]
        self.outer_shape = (d,) if per_feature else ()
        self.x0 = (0.3 + torch.rand(d if per_feature else 1, generator=gen, dtype=DT))
        self.w0 = torch.randn(d, generator=gen, dtype=DT)

    def lambdas(self, x):
        return x if self.per_feature else x.expand(self.d)

    def inner_value(self, w, x, batch):
        X, y = batch
        return 0.5 * ((X @ w - y) ** 2).mean() + 0.5 * (self.lambdas(x) * w ** 2).sum()

    def inner_grad(self, w, x, batch):
        X, y = batch
        return X.T @ (X @ w - y) / len(y) + self.lambdas(x) * w

    def hessian(self, w, x, batch):
        X, y = batch
        return X.T @ X / len(y) + torch.diag(self.lambdas(x))

    def mixed(self, w, x, batch):
        return torch.diag(w) if self.per_feature else w[:, None]

    def inner_grad_x(self, w, x, batch):
        return 0.5 * w ** 2 if self.per_feature else 0.5 * (w ** 2).sum().reshape(1)

    def w_star(self, x):
        X, y = self.inner_batch
        return torch.linalg.solve(self.hessian(None, x, self.inner_batch), X.T @ y / len(y))

    def closed_form(self, x):
        """The issue's formula, d F / d lambda_j = -w*_j [A^-1 grad_w f]_j, summed over j for a shared lambda."""
        w = self.w_star(x)
        per_feature = -w * torch.linalg.solve(self.hessian(w, x, self.inner_batch), self.outer_grad_w(w, x))
        return per_feature if self.per_feature else per_feature.sum().reshape(1)


def random_spd(n, low, high, gen):
    """A symmetric matrix with eigenvalues drawn in [low, high]."""
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))
    eig = low + (high - low) * torch.rand(n, generator=gen, dtype=DT)
    if n > 1:
        eig[0], eig[-1] = low, high
    return q @ torch.diag(eig) @ q.T


class Quadratic(Problem):
    """g = 0.5 w^T A w - w^T B x + c^T w;  f = 0.5 ||w - t||^2 + 0.5 rho ||x||^2.

    w*(x) = A^-1 (B x - c) = M x - A^-1 c with M = A^-1 B; dF/dx = M^T (w* - t) + rho x; the outer optimum is
    x* = (M^T M + rho I)^-1 M^T (t + A^-1 c). g is bilinear in (w, x), so every second derivative is constant.
    """

    def __init__(self, n=4, m=3, seed=0, eig=(1.0, 4.0), rho=0.1, split=True):
        gen = torch.Generator().manual_seed(seed)
        self.name = f"quadratic_{n}x{m}"
        self.A = random_spd(n, *eig, gen)
        self.B = torch.randn(n, m, generator=gen, dtype=DT)
        self.c = torch.randn(n, generator=gen, dtype=DT)
        self.t = torch.randn(n, generator=gen, dtype=DT)
        self.rho = rho
        self.inner_split = [("w_head", 1), ("w_tail", n - 1)] if split and n > 1 else [("w", n)]
        self.outer_shape = (m,)
        self.inner_batch = self.outer_batch = None
        self.x0 = torch.randn(m, generator=gen, dtype=DT)
        self.w0 = torch.randn(n, generator=gen, dtype=DT)

    def inner_value(self, w, x, batch):
        return 0.5 * w @ self.A @ w - w @ self.B @ x + self.c @ w

    def outer_value(self, w, x, batch):
        return 0.5 * ((w - self.t) ** 2).sum() + 0.5 * self.rho * (x ** 2).sum()

    def inner_grad(self, w, x, batch):
        return self.A @ w - self.B @ x + self.c

    def hessian(self, w, x, batch):
        return self.A

    def mixed(self, w, x, batch):
        return -self.B

    def inner_grad_x(self, w, x, batch):
        return -self.B.T @ w

    def outer_grad_w(self, w, x):
        return w - self.t

    def outer_grad_x(self, w, x):
        return self.rho * x

    def w_star(self, x):
        return torch.linalg.solve(self.A, self.B @ x - self.c)

    def closed_form(self, x):
        m = torch.linalg.solve(self.A, self.B)
        return m.T @ (self.w_star(x) - self.t) + self.rho * x

    def outer_optimum(self):
        m = torch.linalg.solve(self.A, self.B)
        rhs = m.T @ (self.t + torch.linalg.solve(self.A, self.c))
        return torch.linalg.solve(m.T @ m + self.rho * torch.eye(m.shape[1], dtype=DT), rhs)


class LogCosh(ValidationMSE):
    """A coupling that is not bilinear: g = 0.5/n ||X w - y||^2 + sum_j exp(x_j) log cosh(w_j), f = 0.5/m ||X_v w - y_v||^2.

    grad_x g = exp(x) log cosh(w) is not polynomial in w, so central differences of it have an O(e^2) error.
    w*(x) has no closed form; it is found by Newton's method to machine precision.
    """

    bilinear_coupling = False

    def __init__(self, n=30, m=20, d=4, seed=1):
        gen = torch.Generator().manual_seed(seed)
        self.name = "logcosh"
        X = torch.randn(n, d, generator=gen, dtype=DT)
        Xv = torch.randn(m, d, generator=gen, dtype=DT)
        w_true = 2 * torch.randn(d, generator=gen, dtype=DT)
        self.inner_batch = (X, X @ w_true + 0.3 * torch.randn(n, generator=gen, dtype=DT))
        self.outer_batch = (Xv, Xv @ w_true + 0.3 * torch.randn(m, generator=gen, dtype=DT))
        self.inner_split = [("w", d)]
        self.outer_shape = (d,)
        self.x0 = 0.5 * torch.randn(d, generator=gen, dtype=DT)
        self.w0 = torch.randn(d, generator=gen, dtype=DT)

    @staticmethod
    def _logcosh(w):
        return w.abs() + torch.log1p(torch.exp(-2 * w.abs())) - math.log(2.0)

    def inner_value(self, w, x, batch):
        X, y = batch
        return 0.5 * ((X @ w - y) ** 2).mean() + (torch.exp(x) * self._logcosh(w)).sum()

    def inner_grad(self, w, x, batch):
        X, y = batch
        return X.T @ (X @ w - y) / len(y) + torch.exp(x) * torch.tanh(w)

    def hessian(self, w, x, batch):
        X, y = batch
        return X.T @ X / len(y) + torch.diag(torch.exp(x) / torch.cosh(w) ** 2)

    def mixed(self, w, x, batch):
        return torch.diag(torch.exp(x) * torch.tanh(w))

    def inner_grad_x(self, w, x, batch):
        return torch.exp(x) * self._logcosh(w)

    def w_star(self, x):
        w = torch.zeros(len(x), dtype=DT)
        for _ in range(100):
            w = w - torch.linalg.solve(self.hessian(w, x, self.inner_batch), self.inner_grad(w, x, self.inner_batch))
        return w


def closed_form_problems():
    """The problems every registered method runs on (float64)."""
    return [Ridge(per_feature=True), Ridge(per_feature=False), Quadratic(), LogCosh()]


_DEFAULT = object()


def snapshot(problem, w, x, inner_batch=_DEFAULT, outer_batch=_DEFAULT):
    """``problem`` at flat (w, x) as the library's functional snapshot (what ``bilevel.compare`` runs)."""
    from bilevel.compare import BilevelProblem

    return BilevelProblem(problem.g, problem.f, problem.inner_params(w), problem.outer_params(x),
                          problem.inner_batch if inner_batch is _DEFAULT else inner_batch,
                          problem.outer_batch if outer_batch is _DEFAULT else outer_batch, name=problem.name)


def hypergradient(problem, method, w, x, inner_batch=_DEFAULT, outer_batch=_DEFAULT, return_result=False, **kwargs):
    """``bilevel.hypergradient`` on ``problem`` at flat (w, x); returns the flat hypergradient (and the result)."""
    import bilevel

    at = snapshot(problem, w, x, inner_batch, outer_batch)
    result = bilevel.hypergradient(at.inner_loss, at.outer_loss, at.inner_params, at.outer_params, at.inner_batch,
                                   at.outer_batch, method, return_result=True, **kwargs)
    flat = problem.flat(result.grads)
    return (flat, result) if return_result else flat


def relative_error(value, reference):
    return float(torch.linalg.vector_norm(value - reference) / torch.linalg.vector_norm(reference))
