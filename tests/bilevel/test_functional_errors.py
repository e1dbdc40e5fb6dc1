"""The functional API on bad input: a NaN loss is named (not returned, not blamed on a solver), a parameter name
the loss does not find and a non-scalar loss get one-line errors, and a method that models the inner step says
that it needs the inner learning rate."""
import pytest
import torch

import bilevel

DT = torch.float64
METHODS = {name: {"implicit": {"solver": bilevel.solvers.DenseSolver()}}.get(name, {})
           for name in bilevel.methods.names()}


def quadratic(nan_in=None):
    """g = 0.5 w^T A w - w^T x, f = 0.5 ||w - 1||^2 (+ NaN in one of them), at the inner optimum w = A^-1 x."""
    a = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=DT)
    x = torch.tensor([0.5, -1.0], dtype=DT)

    def g(inner, outer, batch):
        value = 0.5 * inner["w"] @ a @ inner["w"] - inner["w"] @ outer["x"]
        return value * float("nan") if nan_in == "inner_loss" else value

    def f(inner, outer, batch):
        value = 0.5 * ((inner["w"] - 1) ** 2).sum()
        return value * float("nan") if nan_in == "outer_loss" else value

    return g, f, {"w": torch.linalg.solve(a, x)}, {"x": x}


@pytest.mark.parametrize("role", ["inner_loss", "outer_loss"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_nan_loss_is_named_for_every_method(name, role):
    g, f, inner, outer = quadratic(nan_in=role)
    if bilevel.methods.get(name).name == "first_order" and role == "inner_loss":
        grads = bilevel.hypergradient(g, f, inner, outer, None, None, name)  # first order never evaluates g
        assert torch.equal(grads["x"], torch.zeros(2, dtype=DT))
        return
    with pytest.raises(FloatingPointError) as error:
        bilevel.hypergradient(g, f, inner, outer, None, None, bilevel.methods.get(name, **METHODS[name]),
                              inner_lr=0.1)
    message = str(error.value)
    assert message.startswith(f"hypergradient: {role} is nan at the given parameters") and "\n" not in message
    unchecked = bilevel.hypergradient(g, f, inner, outer, None, None, bilevel.methods.get(name, **METHODS[name]),
                                      inner_lr=0.1, check_finite=False, return_result=True) \
        if role == "outer_loss" else None
    if unchecked is not None and bilevel.methods.get(name).name != "first_order":
        # unchecked, the NaN reaches the caller (the Engine checks); from a fresh state SOBA's v is zero, so its
        # hypergradient is grad_x f (zero here) and the NaN arrives in the outer loss it reports
        fresh_state_is_first_order = bilevel.methods.get(name).name == "soba"
        reached = unchecked.diagnostics["outer_loss"] if fresh_state_is_first_order else unchecked.grads["x"]
        assert not torch.isfinite(reached).all()


def test_a_parameter_name_the_loss_does_not_find_names_both_dicts():
    g, f, inner, outer = quadratic()
    typo = lambda i, o, b: 0.5 * ((i["weights"] - 1) ** 2).sum()  # noqa: E731
    with pytest.raises(KeyError, match=r"hypergradient: outer_loss looked up 'weights', which it did not find "
                                       r"\(inner parameters: w; outer parameters: x\)"):
        bilevel.hypergradient(g, typo, inner, outer, None, None, "cg")


@pytest.mark.parametrize("role", ["inner_loss", "outer_loss"])
def test_a_non_scalar_loss_is_named(role):
    g, f, inner, outer = quadratic()
    per_entry = lambda i, o, b: 0.5 * i["w"] ** 2  # noqa: E731
    losses = (per_entry, f) if role == "inner_loss" else (g, per_entry)
    with pytest.raises(ValueError, match=rf"^hypergradient: {role} returned \(2,\), not a scalar tensor; reduce it"):
        bilevel.hypergradient(*losses, inner, outer, None, None, "cg")


@pytest.mark.parametrize("name", ["finite_difference", "darts", "unroll"])
def test_a_method_that_models_the_inner_step_asks_for_its_learning_rate(name):
    g, f, inner, outer = quadratic()
    with pytest.raises(ValueError, match=r"needs lr; pass inner_lr=\.\.\. \(the inner learning rate\)"):
        bilevel.hypergradient(g, f, inner, outer, None, None, name)
    given = bilevel.hypergradient(g, f, inner, outer, None, None, name, inner_lr=0.1)
    explicit = bilevel.hypergradient(g, f, inner, outer, None, None, bilevel.methods.get(name, lr=0.1))
    torch.testing.assert_close(given, explicit, rtol=0, atol=0)


@pytest.mark.parametrize("argument", ["inner_params", "outer_params"])
def test_a_bare_tensor_for_a_parameter_dict_is_named(argument):
    g, f, inner, outer = quadratic()
    given = {"inner_params": inner, "outer_params": outer}
    given[argument] = next(iter(given[argument].values()))
    with pytest.raises(TypeError, match=rf"^hypergradient: {argument} must be a dict of named tensors, got Tensor; "
                                        r"wrap it, e.g. \{'w': tensor\}"):
        bilevel.hypergradient(g, f, given["inner_params"], given["outer_params"], None, None, "cg")


def test_a_method_reporting_a_non_finite_loss_of_its_own_iterates_is_named():
    """Finite losses at the given parameters and finite grads, but an infinite loss the method evaluated at its own
    iterates (a diverged inner copy): the error names the method and its loss, not a grad."""
    class Overflowing(bilevel.HypergradientMethod):
        name = "overflowing"

        def compute(self, inner_loss, outer_loss, inner_params, outer_params, inner_batch, outer_batch, state=None):
            grads = {k: torch.zeros_like(v) for k, v in outer_params.items()}
            return bilevel.HypergradientResult(grads, {"outer_loss": torch.tensor(float("inf"), dtype=DT)})

    g, f, inner, outer = quadratic()
    with pytest.raises(FloatingPointError, match=r"^hypergradient: method 'overflowing' returned a non-finite loss "
                                                 r"from finite losses at the given parameters; check its settings"):
        bilevel.hypergradient(g, f, inner, outer, None, None, Overflowing())


def test_f2sa_leaves_a_nan_loss_on_a_later_fresh_batch_to_the_loss_check_not_to_its_divergence_check():
    """The second y step's batch makes the outer loss NaN at a y that is still next to z: that is the loss's NaN, so
    it flows on to the caller (here unchecked) instead of being called a diverging step."""
    g, f, inner, outer = quadratic()

    def outer_loss(w, x, batch):
        return f(w, x, None) * (float("nan") if batch == "bad" else 1.0)

    method = bilevel.methods.F2SA(lr=0.01, steps=2, fresh_batches=True)
    result = bilevel.hypergradient(g, outer_loss, inner, outer, bilevel.StepBatches(["ok", "ok", "ok"]),
                                   bilevel.StepBatches(["ok", "bad", "ok"]), method, check_finite=False,
                                   return_result=True)
    assert not torch.isfinite(result.grads["x"]).all()  # reached the caller, no SolverDivergedError on the way
