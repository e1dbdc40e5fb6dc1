"""Gradients compiled (``compile_gradients``: torch.compile of torch.func.grad_and_value) give the hand-derived
gradients and the eager numbers, take the eager pass where they cannot be used (a graph through the parameters,
create_graph), and under ``EngineConfig(compile_gradients=True)`` the Engine's runs equal its eager runs."""
import shutil

import pytest
import torch

import bilevel
from bilevel.autodiff import MicroBatches, compile_gradients, compiled, loss_gradients
from problems import DT, Ridge, relative_error
from tests.bilevel.stochastic_quadratic import outer_value, quadratic_engine

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="torch.compile's inductor needs a C++ compiler")
PROBLEM = Ridge(per_feature=False)  # two inner tensors (w_head, w_tail), a scalar lambda
X, Y = PROBLEM.inner_batch


def point():
    return PROBLEM.inner_params(PROBLEM.w0), PROBLEM.outer_params(PROBLEM.x0)


@pytest.mark.parametrize("batch", [(X, Y), MicroBatches([(X[:20], Y[:20]), (X[20:], Y[20:])])],
                         ids=["plain", "micro_batches"])
def test_compiled_gradients_are_the_hand_derived_ones(batch):
    compiled._compiled.clear()
    inner, outer = point()
    loss = compile_gradients(PROBLEM.g)
    value, (grad_x, grad_w) = loss_gradients(loss, inner, outer, batch, (outer, inner))
    w, x = PROBLEM.flat(inner), PROBLEM.flat(outer)
    assert relative_error(PROBLEM.flat(grad_w), PROBLEM.inner_grad(w, x, (X, Y))) <= 1e-12
    assert relative_error(PROBLEM.flat(grad_x), PROBLEM.inner_grad_x(w, x, (X, Y))) <= 1e-12
    assert abs(float(value - PROBLEM.inner_value(w, x, (X, Y)))) <= 1e-12
    assert [key[1] for key in compiled._compiled] == [("gradient", (1, 0))]  # the compiled path was taken
    _, (only_w,) = loss_gradients(loss, inner, outer, batch, (inner,))
    assert relative_error(PROBLEM.flat(only_w), PROBLEM.flat(grad_w)) <= 1e-12
    assert ("gradient", (0,)) in [key[1] for key in compiled._compiled]


def test_a_graph_through_the_parameters_takes_the_eager_pass():
    """Parameters that are functions of x (an unroll's) give the total derivative in x, which a compiled graph of
    detached inputs could not; create_graph=True keeps the graph. Neither compiles anything."""
    compiled._compiled.clear()
    inner, _ = point()
    outer = {k: v.requires_grad_() for k, v in point()[1].items()}
    through_x = lambda: {k: v * outer["x"] for k, v in inner.items()}  # noqa: E731  w(x) = w0 x, a fresh graph
    loss = compile_gradients(PROBLEM.f)
    _, (total,) = loss_gradients(loss, through_x(), outer, PROBLEM.outer_batch, (outer,))
    _, (eager,) = loss_gradients(PROBLEM.f, through_x(), outer, PROBLEM.outer_batch, (outer,))
    # f depends on x only through w: its partial derivative in x, all a detached graph could give, is zero
    assert torch.equal(total["x"], eager["x"]) and float(total["x"].abs().max()) > 1e-3
    leaves = {k: v.requires_grad_() for k, v in inner.items()}
    _, (graph,) = loss_gradients(loss, leaves, outer, PROBLEM.inner_batch, (leaves,), create_graph=True)
    assert all(g.grad_fn is not None for g in graph.values())
    assert not compiled._compiled
    _, (plain,) = loss_gradients(loss, leaves, outer, PROBLEM.inner_batch, (leaves,))
    assert relative_error(PROBLEM.flat(graph), PROBLEM.flat(plain)) <= 1e-12
    assert [key[1] for key in compiled._compiled] == [("gradient", (0,))]


def test_a_marked_loss_is_the_loss():
    inner, outer = point()
    assert torch.equal(compile_gradients(PROBLEM.g)(inner, outer, (X, Y)), PROBLEM.g(inner, outer, (X, Y)))


@pytest.mark.parametrize("method, config", [
    ("cg", {}),
    (bilevel.MethodSpec("soba", {"compile_products": True}), {"reuse_inner_gradient": True}),
    (bilevel.MethodSpec("amigo", {"compile_products": True}), {"inner_steps": 3}),
    (bilevel.MethodSpec("f2sa", {"steps": 2}), {}),
    ("bome", {}),
    (bilevel.MethodSpec("unroll", {"steps": 2}), {}),
], ids=["cg", "soba", "amigo", "f2sa", "bome", "unroll"])
def test_the_engine_with_compiled_gradients_runs_its_eager_numbers(method, config):
    paths = {}
    for flag in (False, True):
        compiled._compiled.clear()
        engine = quadratic_engine(method, outer_steps=20, noise=0.5, compile_gradients=flag, **config)
        engine.run()
        paths[flag] = outer_value(engine)
        if flag:
            assert any(key[1][0] == "gradient" for key in compiled._compiled)
    assert relative_error(paths[True], paths[False]) <= 1e-12
    assert float(paths[True].norm()) > 0


def test_engine_config_checks_compile_gradients():
    with pytest.raises(ValueError, match=r"^EngineConfig: compile_gradients must be True or False, got 1$"):
        bilevel.EngineConfig(compile_gradients=1)
    with pytest.raises(ValueError, match=r"^EngineConfig: compile_gradients takes no float16 loss scaling; use "
                                         r"autocast_dtype='bfloat16' or None, or compile_gradients=False$"):
        bilevel.EngineConfig(compile_gradients=True, autocast_dtype="float16")


def test_engines_on_different_data_in_one_process_each_get_their_own_numbers():
    """The compiled graph is reused across Engines (it is traced from the loss's code): the data it reads must be
    each problem's own, not the first one's."""
    from problems import Quadratic
    compiled._compiled.clear()
    finals = []
    for seed in (0, 1):
        paths = {}
        for flag in (True, False):
            engine = quadratic_engine("cg", problem=Quadratic(seed=seed, rho=0.5), outer_steps=10,
                                      compile_gradients=flag)
            engine.run()
            paths[flag] = outer_value(engine)
        assert relative_error(paths[True], paths[False]) <= 1e-12
        finals.append(paths[True])
    assert relative_error(finals[0], finals[1]) > 1e-2
