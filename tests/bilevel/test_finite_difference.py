"""DARTS' finite-difference hypergradient (Liu et al. 2019, eqs. 7-8) and the identity-implicit variant, against
double-backward references written here with plain autograd; input immutability and dropout-mask replay."""
import pytest
import torch

import bilevel
from bilevel.methods import FiniteDifference, IdentityImplicit, Unroll
from problems import DT, LogCosh, Quadratic, Ridge, closed_form_problems, hypergradient, relative_error

BILINEAR = [Ridge(per_feature=True), Ridge(per_feature=False), Quadratic()]
BILINEAR_IDS = [p.name for p in BILINEAR]


def one_step_unroll_reference(problem, w, x, lr):
    """d/dx f(w - lr grad_w g(w, x), x) by double backward."""
    w = w.clone().requires_grad_()
    x = x.clone().requires_grad_()
    step, = torch.autograd.grad(problem.inner_value(w, x, problem.inner_batch), w, create_graph=True)
    return torch.autograd.grad(problem.outer_value(w - lr * step, x, problem.outer_batch), x)[0]


def identity_implicit_reference(problem, w, x):
    """grad_x f(w) - (d^2 g / dx dw) grad_w f(w), the mixed product by double backward."""
    w = w.clone().requires_grad_()
    x = x.clone().requires_grad_()
    grad_w_f, grad_x_f = torch.autograd.grad(problem.outer_value(w, x, problem.outer_batch), (w, x),
                                             allow_unused=True, materialize_grads=True)
    grad_w_g, = torch.autograd.grad(problem.inner_value(w, x, problem.inner_batch), w, create_graph=True)
    mixed, = torch.autograd.grad(grad_w_g, x, grad_outputs=grad_w_f)
    return grad_x_f - mixed


@pytest.mark.parametrize("problem", BILINEAR, ids=BILINEAR_IDS)
@pytest.mark.parametrize("lr", [0.01, 0.3])
def test_finite_difference_is_exact_for_bilinear_coupling(problem, lr):
    value = hypergradient(problem, FiniteDifference(lr=lr, epsilon=0.01), problem.w0, problem.x0)
    reference = one_step_unroll_reference(problem, problem.w0, problem.x0, lr)
    assert relative_error(value, reference) < 1e-10
    assert relative_error(value, problem.unroll(problem.w0, problem.x0, 1, lr)) < 1e-10


@pytest.mark.parametrize("method,reference", [
    (lambda eps: FiniteDifference(lr=0.1, epsilon=eps), lambda p: one_step_unroll_reference(p, p.w0, p.x0, 0.1)),
    (lambda eps: IdentityImplicit(epsilon=eps), lambda p: identity_implicit_reference(p, p.w0, p.x0)),
], ids=["finite_difference", "identity_implicit"])
def test_error_is_second_order_in_epsilon(method, reference):
    """A coupling that is not bilinear: halving epsilon cuts the error by about 4."""
    problem = LogCosh()
    expected = reference(problem)
    errors = [relative_error(hypergradient(problem, method(eps), problem.w0, problem.x0), expected)
              for eps in (0.4, 0.2, 0.1, 0.05)]
    assert errors[0] > 1e-4  # not exact: the ratio below measures the truncation error
    for coarse, fine in zip(errors, errors[1:]):
        assert 3.0 < coarse / fine < 5.0


@pytest.mark.parametrize("lr", [0.01, 0.1, 0.5])
def test_finite_difference_scales_second_order_term_by_lr(lr):
    """The second-order term is lr * (d^2 g/dx dw) grad_w f(w'): matching the one-step unroll at several lr
    pins the factor; a formula without lr would be off by 1/lr in that term."""
    problem = Ridge(per_feature=True)  # grad_x f = 0: the hypergradient is the second-order term alone
    w, x = problem.w0, problem.x0
    value = hypergradient(problem, FiniteDifference(lr=lr, epsilon=0.01), w, x)
    assert relative_error(value, one_step_unroll_reference(problem, w, x, lr)) < 1e-10
    w_virtual = w - lr * problem.inner_grad(w, x, problem.inner_batch)
    without_lr = -problem.mixed(w, x, None).T @ problem.outer_grad_w(w_virtual, x)
    assert relative_error(value, lr * without_lr) < 1e-10
    assert relative_error(value, without_lr) > 0.4


def test_finite_difference_over_lr_tends_to_identity_implicit_term():
    """As lr -> 0, FD(lr) / lr -> -(d^2 g/dx dw) grad_w f(w): the term identity_implicit uses unscaled."""
    problem = Ridge(per_feature=True)
    w, x = problem.w0, problem.x0
    limit = identity_implicit_reference(problem, w, x)
    errors = [relative_error(hypergradient(problem, FiniteDifference(lr=lr), w, x) / lr, limit) for lr in (1e-2, 1e-3)]
    assert errors[1] < errors[0] / 5 and errors[1] < 1e-2


@pytest.mark.parametrize("problem", BILINEAR, ids=BILINEAR_IDS)
def test_identity_implicit_is_exact_for_bilinear_coupling(problem):
    value = hypergradient(problem, IdentityImplicit(epsilon=0.01), problem.w0, problem.x0)
    assert relative_error(value, identity_implicit_reference(problem, problem.w0, problem.x0)) < 1e-10
    assert relative_error(value, problem.identity_implicit(problem.w0, problem.x0)) < 1e-10


def _method_for(name):
    settings = {"implicit": {"solver": bilevel.solvers.DenseSolver()}}
    return bilevel.methods.build(name, inner_lr=0.1, **settings.get(name, {}))


@pytest.mark.parametrize("name", bilevel.methods.names())
@pytest.mark.parametrize("as_parameters", [False, True], ids=["tensors", "parameters"])
def test_inputs_are_never_modified(name, as_parameters):
    problem = Quadratic()
    make = torch.nn.Parameter if as_parameters else (lambda t: t)
    inner = {k: make(v) for k, v in problem.inner_params(problem.w_star(problem.x0)).items()}
    outer = {k: make(v) for k, v in problem.outer_params(problem.x0).items()}
    snapshot = {k: (v.clone(), v._version, v.requires_grad) for k, v in {**inner, **outer}.items()}
    bilevel.hypergradient(problem.g, problem.f, inner, outer, None, None, _method_for(name))
    for k, v in {**inner, **outer}.items():
        value, version, requires_grad = snapshot[k]
        assert torch.equal(v, value), k
        assert v._version == version, f"{k} was written in place (even if restored)"
        assert v.requires_grad == requires_grad and v.grad is None, k


class MaskRecorder:
    """Ridge-like losses with dropout on the inputs drawn from torch's generator; records every mask drawn.

    g = mean_i sigmoid(x_i) 0.5 ((m_i * X_i) w - y_i)^2 + 0.05 ||w||^2 (per-example weights x: data reweighting),
    f = 0.5 mean ((m * X_v) w - y_v)^2. grad_x g is quadratic in w, so central differences are exact under one mask.
    """

    def __init__(self, n=12, d=3, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.X, self.y = torch.randn(n, d, generator=gen, dtype=DT), torch.randn(n, generator=gen, dtype=DT)
        self.Xv, self.yv = torch.randn(n, d, generator=gen, dtype=DT), torch.randn(n, generator=gen, dtype=DT)
        self.w = torch.randn(d, generator=gen, dtype=DT)
        self.x = torch.randn(n, generator=gen, dtype=DT)
        self.masks = {"inner": [], "outer": []}

    @staticmethod
    def draw(shape):
        return (torch.rand(shape, dtype=DT) > 0.3).to(DT) / 0.7

    def inner_value(self, w, x, mask):
        return (torch.sigmoid(x) * 0.5 * (((mask * self.X) @ w - self.y) ** 2)).mean() + 0.05 * (w ** 2).sum()

    def outer_value(self, w, mask):
        return 0.5 * (((mask * self.Xv) @ w - self.yv) ** 2).mean()

    def g(self, inner, outer, batch):
        mask = self.draw(self.X.shape)
        self.masks["inner"].append(mask)
        return self.inner_value(inner["w"], outer["x"], mask)

    def f(self, inner, outer, batch):
        mask = self.draw(self.Xv.shape)
        self.masks["outer"].append(mask)
        return self.outer_value(inner["w"], mask)


@pytest.mark.parametrize("name", ["finite_difference", "identity_implicit", "cg", "neumann", "exact", "unroll"])
def test_every_pass_of_one_hypergradient_sees_the_same_dropout_masks(name):
    problem = MaskRecorder()
    method = bilevel.methods.build(name, inner_lr=0.1, **({"steps": 3} if name == "unroll" else {}))
    bilevel.hypergradient(problem.g, problem.f, {"w": problem.w}, {"x": problem.x}, None, None, method)
    for level, masks in problem.masks.items():
        assert masks, level
        assert all(torch.equal(mask, masks[0]) for mask in masks), f"{level} passes drew different masks"
    assert not torch.equal(problem.masks["inner"][0], torch.ones_like(problem.X) / 0.7)


def test_finite_difference_under_dropout_equals_one_step_unroll_with_the_replayed_mask():
    problem = MaskRecorder()
    lr = 0.3
    value = bilevel.hypergradient(problem.g, problem.f, {"w": problem.w}, {"x": problem.x}, None, None,
                                  FiniteDifference(lr=lr, epsilon=0.01))["x"]
    inner_mask, outer_mask = problem.masks["inner"][0], problem.masks["outer"][0]
    w = problem.w.clone().requires_grad_()
    x = problem.x.clone().requires_grad_()
    step, = torch.autograd.grad(problem.inner_value(w, x, inner_mask), w, create_graph=True)
    reference, = torch.autograd.grad(problem.outer_value(w - lr * step, outer_mask), x)
    assert relative_error(value, reference) < 1e-10
    # had the +e v and -e v passes drawn fresh masks, the difference would measure mask noise instead
    other_masks = [problem.draw(problem.X.shape) for _ in range(2)]
    virtual = (w - lr * step).detach().requires_grad_()
    v, = torch.autograd.grad(problem.outer_value(virtual, outer_mask), virtual)  # f does not depend on x here
    e = 0.01 / v.norm()
    plus, minus = (torch.autograd.grad(problem.inner_value(problem.w + s * e * v, x, m), x)[0]
                   for s, m in zip((1, -1), other_masks))
    noisy = -lr * (plus - minus) / (2 * e)
    assert relative_error(noisy, reference) > 1.0


def test_hypergradient_is_reproducible_from_the_global_seed():
    problem = MaskRecorder()
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        results.append(bilevel.hypergradient(problem.g, problem.f, {"w": problem.w}, {"x": problem.x}, None, None,
                                             "finite_difference", inner_lr=0.1)["x"])
    assert torch.equal(results[0], results[1])


def test_unroll_one_step_equals_finite_difference_on_every_bilinear_problem():
    for problem in closed_form_problems():
        if not problem.bilinear_coupling:
            continue
        unrolled = hypergradient(problem, Unroll(steps=1, lr=0.2), problem.w0, problem.x0)
        differenced = hypergradient(problem, FiniteDifference(lr=0.2), problem.w0, problem.x0)
        assert relative_error(differenced, unrolled) < 1e-10
