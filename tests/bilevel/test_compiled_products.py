"""AmIGO's and SOBA's products compiled (torch.compile of a torch.func vjp of the gradient) give the eager products'
numbers: AmIGO on fresh batches and on one shared batch, with gradient descent and CG; SOBA's joint products (H v,
the mixed product, the inner gradient and loss); in the functional API and in the Engine."""
import shutil

import pytest
import torch

from bilevel import StepBatches
from bilevel.autodiff import compiled
from bilevel.methods import SOBA, AmIGO
from problems import DT, Ridge, hypergradient, relative_error
from tests.bilevel.stochastic_quadratic import outer_value, quadratic_engine

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="torch.compile's inductor needs a C++ compiler")
PROBLEM = Ridge(per_feature=True)  # its Hessian depends on the batch, so each batch's product is its own
X, Y = PROBLEM.inner_batch


@pytest.mark.parametrize("settings", [{"fresh_batches": True}, {}, {"solver": "cg", "iterations": 4}],
                         ids=["fresh_batches", "shared_batch", "cg"])
def test_compiled_products_give_the_eager_products_numbers(settings):
    w, x = PROBLEM.w0, PROBLEM.x0
    q0 = PROBLEM.inner_params(torch.randn(len(w), generator=torch.Generator().manual_seed(4), dtype=DT))
    batches = [(X[i::4], Y[i::4]) for i in range(4)]
    batch = StepBatches(batches) if settings.get("fresh_batches") else batches[0]
    method = {"iterations": 3, "step": 0.3, **settings}
    eager, eager_result = hypergradient(PROBLEM, AmIGO(**method), w, x, inner_batch=batch, state=q0,
                                        return_result=True)
    fused, fused_result = hypergradient(PROBLEM, AmIGO(**method, compile_products=True), w, x, inner_batch=batch,
                                        state=q0, return_result=True)
    assert relative_error(fused, eager) <= 1e-12
    assert relative_error(PROBLEM.flat(fused_result.state), PROBLEM.flat(eager_result.state)) <= 1e-12
    assert fused_result.diagnostics["hvp"] == fused_result.diagnostics["gradient_evaluations"] - 1 >= 4


def test_the_engine_runs_compiled_products_once_compiled_and_on_the_eager_path():
    compiled._compiled.clear()
    paths = {}
    for flag in (False, True):
        engine = quadratic_engine(AmIGO(compile_products=flag), outer_steps=30, inner_steps=1)
        engine.run()
        paths[flag] = outer_value(engine)
    assert relative_error(paths[True], paths[False]) <= 1e-12
    assert len(compiled._compiled) == 1  # one compiled product for the Engine's inner loss, over all its steps


def test_compile_products_must_be_a_bool():
    with pytest.raises(ValueError, match=r"^AmIGO: compile_products must be True or False, got 'yes'$"):
        AmIGO(compile_products="yes")


def test_compiled_soba_step_gives_the_eager_numbers():
    w, x = PROBLEM.w0, PROBLEM.x0
    v = PROBLEM.inner_params(torch.randn(len(w), generator=torch.Generator().manual_seed(5), dtype=DT))
    state = {"v": v, "calls": 3}
    results = [hypergradient(PROBLEM, SOBA(step=0.3, decay=0.5, compile_products=flag), w, x, inner_batch=(X, Y),
                             state=state, return_result=True) for flag in (False, True)]
    (eager, eager_result), (fused, fused_result) = results
    assert relative_error(fused, eager) <= 1e-12
    assert relative_error(PROBLEM.flat(fused_result.state["v"]), PROBLEM.flat(eager_result.state["v"])) <= 1e-12
    assert fused_result.state["calls"] == 4
    assert relative_error(PROBLEM.flat(fused_result.inner_grads), PROBLEM.flat(eager_result.inner_grads)) <= 1e-12
    assert abs(float(fused_result.diagnostics["inner_loss"] - eager_result.diagnostics["inner_loss"])) <= 1e-12
    assert fused_result.diagnostics["hvp"] == eager_result.diagnostics["hvp"] == 1


@pytest.mark.parametrize("reuse", [True, False], ids=["reused_inner_gradient", "own_inner_step"])
def test_the_engine_runs_compiled_soba_on_the_eager_path(reuse):
    paths = {}
    compiled._compiled.clear()
    for flag in (False, True):
        engine = quadratic_engine(SOBA(compile_products=flag), outer_steps=30, noise=0.5,
                                  reuse_inner_gradient=reuse)
        engine.run()
        paths[flag] = outer_value(engine)
    assert [key[1] for key in compiled._compiled] == ["joint"]  # the compiled run took the compiled products
    assert relative_error(paths[True], paths[False]) <= 1e-12
    assert float(paths[True].norm()) > 0


def test_soba_compile_products_needs_the_exact_products():
    with pytest.raises(ValueError, match=r"^SOBA: compile_products compiles the exact products; pass "
                                         r"hessian='exact' or compile_products=False$"):
        SOBA(hessian="finite_difference", compile_products=True)
    with pytest.raises(ValueError, match=r"^SOBA: compile_products must be True or False, got 1$"):
        SOBA(compile_products=1)


class Recording:
    """PROBLEM's inner loss with a side effect that torch.func's compiled transforms cannot take."""

    def __call__(self, w, x, batch):
        value = PROBLEM.g(w, x, batch)
        self.last = value.detach()
        return value


@pytest.mark.parametrize("method", [SOBA(step=0.3, compile_products=True),
                                    AmIGO(iterations=3, step=0.3, compile_products=True)], ids=["soba", "amigo"])
def test_a_loss_torch_compile_fails_on_takes_the_eager_products_with_one_warning(method):
    import dataclasses
    import warnings

    import bilevel

    w, x = PROBLEM.inner_params(PROBLEM.w0), PROBLEM.outer_params(PROBLEM.x0)
    args = (w, x, (X, Y), PROBLEM.outer_batch)
    eager = bilevel.hypergradient(PROBLEM.g, PROBLEM.f, *args, dataclasses.replace(method, compile_products=False))
    loss = Recording()
    with pytest.warns(RuntimeWarning, match=r"^compile_products: torch.compile failed on .*Recording.*; its "
                                            r"(second-derivative products|Hessian-vector products) are taken "
                                            r"eagerly$"):
        fused = bilevel.hypergradient(loss, PROBLEM.f, *args, method)
    assert all(torch.equal(fused[k], eager[k]) for k in eager)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = bilevel.hypergradient(loss, PROBLEM.f, *args, method)  # eager from now on, without a second warning
    assert all(torch.equal(again[k], eager[k]) for k in eager)


def a_state():
    """SOBA's state with a v that is not zero (with v = 0 this problem's hypergradient is 0)."""
    v = torch.randn(len(PROBLEM.w0), generator=torch.Generator().manual_seed(5), dtype=DT)
    return {"v": PROBLEM.inner_params(v), "calls": 3}


def test_an_error_of_the_loss_itself_is_raised_as_eagerly_and_changes_nothing():
    """A wrong batch fails the loss compiled or not: the eager error, no warning, and the next call is compiled."""
    import warnings

    import bilevel

    compiled._compiled.clear()
    compiled._failed.clear()
    w, x = PROBLEM.inner_params(PROBLEM.w0), PROBLEM.outer_params(PROBLEM.x0)
    method = SOBA(step=0.3, compile_products=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match=r"^size mismatch, got input \(40\), mat \(40x2\), vec \(5\)$"):
            bilevel.hypergradient(PROBLEM.g, PROBLEM.f, w, x, (X[:, :2], Y), PROBLEM.outer_batch, method)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)] and not compiled._failed
    fused, eager = (bilevel.hypergradient(PROBLEM.g, PROBLEM.f, w, x, (X, Y), PROBLEM.outer_batch, soba,
                                          state=a_state()) for soba in (method, SOBA(step=0.3)))
    assert relative_error(PROBLEM.flat(fused), PROBLEM.flat(eager)) <= 1e-12 and float(PROBLEM.flat(eager).norm()) > 0
    assert [key[1] for key in compiled._compiled] == ["joint"] and not compiled._failed


def test_a_loss_method_of_an_object_with_its_own_getattr_is_compiled():
    """The trace key is read from the instance's own attributes, past a __getattr__ that raises KeyError."""
    import bilevel

    class Settings:
        def __init__(self):
            self._values = {"scale": 2.0}

        def __getattr__(self, name):
            return self._values[name]

        def g(self, w, x, batch):
            return self.scale * PROBLEM.g(w, x, batch)

    compiled._compiled.clear()
    w, x = PROBLEM.inner_params(PROBLEM.w0), PROBLEM.outer_params(PROBLEM.x0)
    settings = Settings()
    fused, eager = (bilevel.hypergradient(settings.g, PROBLEM.f, w, x, (X, Y), PROBLEM.outer_batch, soba,
                                          state=a_state())
                    for soba in (SOBA(step=0.3, compile_products=True), SOBA(step=0.3)))
    assert relative_error(PROBLEM.flat(fused), PROBLEM.flat(eager)) <= 1e-12 and float(PROBLEM.flat(eager).norm()) > 0
    assert [key[1] for key in compiled._compiled] == ["joint"]
