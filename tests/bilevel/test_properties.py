"""Property tests over random well-conditioned quadratic bilevel problems (hypothesis)."""
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bilevel
from bilevel.methods import ConjugateGradient, Exact, FiniteDifference, Neumann, Unroll
from problems import Quadratic, hypergradient, relative_error

PROPERTY = settings(max_examples=30, deadline=None)
quadratics = st.builds(lambda n, m, seed: Quadratic(n=n, m=m, seed=seed, eig=(1.0, 4.0), split=n > 1),
                       n=st.integers(1, 8), m=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))


@PROPERTY
@given(problem=quadratics)
def test_exact_equals_closed_form(problem):
    x = problem.x0
    assert relative_error(hypergradient(problem, Exact(), problem.w_star(x), x), problem.closed_form(x)) < 1e-8


@PROPERTY
@given(problem=quadratics)
def test_cg_equals_exact(problem):
    x = problem.x0
    w = problem.w_star(x)
    assert relative_error(hypergradient(problem, ConjugateGradient(iterations=50, tol=1e-14), w, x),
                          hypergradient(problem, Exact(), w, x)) < 1e-8


@PROPERTY
@given(problem=quadratics)
def test_neumann_with_enough_iterations_equals_exact(problem):
    x = problem.x0
    w = problem.w_star(x)
    # eigenvalues in [1, 4]: the series contracts by at most 3/4 per term, (3/4)^150 ~ 1e-19
    assert relative_error(hypergradient(problem, Neumann(iterations=150), w, x),
                          hypergradient(problem, Exact(), w, x)) < 1e-8


@PROPERTY
@given(problem=quadratics, lr=st.floats(1e-3, 0.4))
def test_finite_difference_equals_one_step_unroll_for_bilinear_coupling(problem, lr):
    w, x = problem.w0, problem.x0
    assert relative_error(hypergradient(problem, FiniteDifference(lr=lr), w, x),
                          hypergradient(problem, Unroll(steps=1, lr=lr), w, x)) < 1e-8


shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
param_shapes = st.dictionaries(st.sampled_from(["a", "b.weight", "c.bias", "d"]), shapes, min_size=1, max_size=3)


@PROPERTY
@given(inner_shapes=param_shapes, outer_shapes=param_shapes, dtype=st.sampled_from([torch.float32, torch.float64]),
       name=st.sampled_from(sorted(set(bilevel.methods.names()) - {"implicit"})), seed=st.integers(0, 1000))
def test_output_has_the_keys_shapes_and_dtypes_of_outer_params(inner_shapes, outer_shapes, dtype, name, seed):
    gen = torch.Generator().manual_seed(seed)
    inner = {k: torch.randn(s, generator=gen).to(dtype) for k, s in inner_shapes.items()}
    outer = {k: torch.randn(s, generator=gen).to(dtype) for k, s in outer_shapes.items()}
    n, m = (sum(math.prod(s) for s in d.values()) for d in (inner_shapes, outer_shapes))
    a = (torch.eye(n) + 0.1 * torch.ones(n, n)).to(dtype)
    b = torch.randn(n, m, generator=gen).to(dtype)

    def flat(params):
        return torch.cat([v.reshape(-1) for v in params.values()])

    def g(w, x, batch):
        w, x = flat(w), flat(x)
        return 0.5 * w @ a @ w - w @ b @ x

    def f(w, x, batch):
        return 0.5 * (flat(w) ** 2).sum() + 0.5 * (flat(x) ** 2).sum()

    grads = bilevel.hypergradient(g, f, inner, outer, None, None, name, inner_lr=0.1)
    assert list(grads) == list(outer)
    for k, v in outer.items():
        assert grads[k].shape == v.shape and grads[k].dtype == v.dtype, k
        assert torch.isfinite(grads[k]).all(), k
