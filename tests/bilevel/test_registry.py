"""Registry-driven common test: every registered method runs on every closed-form problem and, where the method is
exact for that problem, matches its reference; registry errors; user-registered methods; settings validation."""
from dataclasses import dataclass

import pytest
import torch

import bilevel
from bilevel.methods import (BOME, F2SA, SOBA, AmIGO, FiniteDifference, FirstOrder, HypergradientMethod,
                             HypergradientResult, IdentityImplicit, ImplicitMethod, Unroll)
from bilevel.methods import base as registry_module
from problems import DT, closed_form_problems, hypergradient

PROBLEMS = closed_form_problems()
SETTINGS = {  # settings some registered names need to be exact on these small problems
    "implicit": {"solver": bilevel.solvers.DenseSolver()},
    "neumann": {"iterations": 200},
}


INNER_LR = 0.05  # what a caller that knows the inner step gives the methods that model it


def make_method(name):
    return bilevel.methods.build(name, inner_lr=INNER_LR, **SETTINGS.get(name, {}))


def start_state(problem, method, w):
    """For methods that carry a state, one away from anything special (zero v, y = w), so that the reference checks
    their whole update; ``None`` for the others."""
    u = torch.randn(w.numel(), generator=torch.Generator().manual_seed(7), dtype=DT)
    if isinstance(method, SOBA):
        return {"v": problem.inner_params(u), "calls": 2}
    if isinstance(method, AmIGO):
        return problem.inner_params(u)
    if isinstance(method, F2SA):
        return {"y": problem.inner_params(w + 0.1 * u), "calls": 3, "multiplier": method.multiplier + 0.5}
    if isinstance(method, BOME):
        return {"w": problem.inner_params(w + 0.1 * u), "calls": 3}
    return None


def reference_and_tolerance(problem, method, w, x, state):
    """What ``method`` computes on ``problem`` at (w, x) from ``state``, by hand, and how closely it must agree."""
    if isinstance(method, SOBA):
        return problem.soba(w, x, problem.flat(state["v"])), 1e-10
    if isinstance(method, AmIGO):
        return problem.amigo(x, problem.flat(state), method.iterations, method.step), 1e-10
    if isinstance(method, F2SA):
        return problem.f2sa(w, x, problem.flat(state["y"]), state["multiplier"], method.steps, method.lr), 1e-10
    if isinstance(method, BOME):
        return problem.bome(w, x, problem.flat(state["w"]), method.eta), 1e-10
    if isinstance(method, ImplicitMethod):
        return problem.implicit(x), 1e-8
    if isinstance(method, Unroll):
        return problem.unroll(w, x, method.steps, method.lr), 1e-10
    if isinstance(method, FiniteDifference):
        return problem.unroll(w, x, 1, method.lr), 1e-8 if problem.bilinear_coupling else 1e-4
    if isinstance(method, IdentityImplicit):
        return problem.identity_implicit(w, x), 1e-8 if problem.bilinear_coupling else 1e-4
    if isinstance(method, FirstOrder):
        return problem.first_order(w, x), 1e-12
    return None, None


@pytest.mark.parametrize("problem", PROBLEMS, ids=[p.name for p in PROBLEMS])
@pytest.mark.parametrize("name", bilevel.methods.names())
def test_every_registered_method_on_every_closed_form_problem(name, problem):
    method = make_method(name)
    x = problem.x0
    # implicit methods are exact at the inner optimum; the others at any point (w0 is far from it)
    w = problem.w_star(x) if isinstance(method, ImplicitMethod) else problem.w0
    outer = problem.outer_params(x)
    state = start_state(problem, method, w)
    grads = bilevel.hypergradient(problem.g, problem.f, problem.inner_params(w), outer, problem.inner_batch,
                                  problem.outer_batch, method, state=state)
    assert list(grads) == list(outer)
    for k in outer:
        assert grads[k].shape == outer[k].shape and grads[k].dtype == outer[k].dtype, k
        assert torch.isfinite(grads[k]).all(), k
    reference, tolerance = reference_and_tolerance(problem, method, w, x, state)
    assert reference is not None, f"no reference for registered method '{name}': add one to this test"
    error = torch.linalg.vector_norm(problem.flat(grads) - reference)
    assert error <= tolerance * max(float(torch.linalg.vector_norm(reference)), 1e-3), (name, float(error))


def test_unknown_name_lists_registered_names():
    with pytest.raises(ValueError, match="unknown hypergradient method 'newton_krylov'") as error:
        bilevel.methods.get("newton_krylov")
    for name in bilevel.methods.names():
        assert name in str(error.value)


def test_lookup_is_case_insensitive_and_aliases_give_the_same_class():
    assert type(bilevel.methods.get("CG")) is type(bilevel.methods.get("conjugate_gradient"))
    assert type(bilevel.methods.get("darts")) is FiniteDifference
    assert bilevel.methods.get("darts", lr=0.5).lr == 0.5


@pytest.fixture
def private_registry(monkeypatch):
    """Registrations made by a test stay inside it."""
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))


def test_user_registered_method_works_without_touching_the_library(private_registry):
    @bilevel.methods.register("half_first_order", "hfo")
    @dataclass
    class HalfFirstOrder(HypergradientMethod):
        """A toy method: half the direct gradient of the outer loss."""

        factor: float = 0.5

        def compute(self, inner_loss, outer_loss, inner_params, outer_params, inner_batch, outer_batch, state=None):
            loss = outer_loss(inner_params, outer_params, outer_batch)
            grads = torch.autograd.grad(loss, list(outer_params.values()))
            return HypergradientResult({k: self.factor * g for k, g in zip(outer_params, grads)}, {"calls": 1})

    assert {"half_first_order", "hfo"} <= set(bilevel.methods.names())
    assert HalfFirstOrder.name == "half_first_order"
    problem = PROBLEMS[2]  # the quadratic problem has a direct gradient rho x
    w, x = problem.w0, problem.x0
    for method in ("half_first_order", "HFO", HalfFirstOrder(factor=0.5)):
        value = hypergradient(problem, method, w, x)
        assert torch.allclose(value, 0.5 * problem.first_order(w, x), rtol=1e-14, atol=0)
    assert bilevel.methods.get("hfo", factor=2.0).factor == 2.0
    with pytest.raises(ValueError, match="already exists"):
        bilevel.methods.register("cg")(HalfFirstOrder)


@pytest.mark.parametrize("name,field,value", [
    ("unroll", "lr", 0.0), ("unroll", "lr", -0.1), ("unroll", "steps", 0), ("unroll", "steps", -2),
    ("unroll", "steps", 2.5), ("unroll", "optimizer", "rmsprop"),
    ("finite_difference", "lr", 0.0), ("finite_difference", "epsilon", 0.0), ("finite_difference", "epsilon", -1e-3),
    ("darts", "lr", -1.0), ("identity_implicit", "epsilon", 0.0),
    ("neumann", "iterations", 0), ("neumann", "iterations", 2.5), ("neumann", "step", 0.0), ("neumann", "step", -1.0),
    ("neumann", "power_iterations", 0),
    ("cg", "iterations", 0), ("cg", "iterations", 2.5), ("cg", "tol", 0.0), ("cg", "damping", -1.0),
    ("exact", "damping", -1.0), ("exact", "max_size", 0),
    ("soba", "step", 0.0), ("soba", "step", -0.1), ("soba", "decay", 0.0), ("soba", "decay", 1.5),
    ("soba", "epsilon", 0.0), ("soba", "hessian", "dense"),
    ("amigo", "solver", "neumann"), ("amigo", "iterations", 0), ("amigo", "step", 0.0),
    ("amigo", "fresh_batches", 1),
    ("f2sa", "lr", 0.0), ("f2sa", "multiplier", 0.0), ("f2sa", "multiplier_growth", -1.0), ("f2sa", "steps", 0),
    ("f2sa", "multiplier_growth_decay", -0.5), ("f2sa", "decay", 1.5), ("f2sa", "y_step", "lr*multiplier"),
    ("f2sa", "fresh_batches", "yes"), ("f2sa", "h_batches", 0), ("f2sa", "h_batches", True),
    ("f2sa", "h_batches", 2.0),
    ("bome", "step", 0.0), ("bome", "eta", 0.0), ("bome", "decay", 1.5), ("bome", "decay_start", 0),
])
def test_invalid_settings_raise_value_error_naming_the_field(name, field, value):
    with pytest.raises(ValueError, match=field):
        bilevel.methods.get(name, **{field: value})


def test_settings_given_with_a_method_object_are_rejected():
    with pytest.raises(ValueError, match="settings"):
        bilevel.methods.get(Unroll(), lr=0.1)


def test_unknown_method_type_is_a_type_error():
    with pytest.raises(TypeError, match="method name or a HypergradientMethod"):
        bilevel.methods.get(3)


def test_hypergradient_rejects_empty_and_non_float_parameters():
    problem = PROBLEMS[2]
    inner, outer = problem.inner_params(problem.w0), problem.outer_params(problem.x0)
    with pytest.raises(ValueError, match="outer_params is empty"):
        bilevel.hypergradient(problem.g, problem.f, inner, {}, None, None, "cg")
    with pytest.raises(ValueError, match="inner_params is empty"):
        bilevel.hypergradient(problem.g, problem.f, {}, outer, None, None, "cg")
    with pytest.raises(TypeError, match="parameter 'x' must be a floating-point tensor"):
        bilevel.hypergradient(problem.g, problem.f, inner, {"x": torch.ones(3, dtype=torch.long)}, None, None, "cg")


def test_an_unknown_setting_names_the_methods_settings():
    with pytest.raises(ValueError, match=r"method 'finite_difference' has no setting bogus; its settings: .*epsilon"):
        bilevel.methods.get("finite_difference", bogus=1)
