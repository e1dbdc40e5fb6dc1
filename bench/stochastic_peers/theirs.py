"""The benchopt bilevel benchmark's own solvers, imported from a checkout outside this repository, on JAX oracles.

The solver code is theirs, unchanged: ``solvers/{soba,amigo,f2sa}.py`` with their minibatch sampler, step-size
scheduler and ``jax.lax.scan`` epochs (``benchmark_utils``). The oracles are ours, written in their convention
(``f(inner_var, outer_var, start, batch_size)``, a contiguous slice of the data from ``start``, as their
``datasets/*.py`` do) over the very arrays our PyTorch problems hold, in float64. Their dataset modules download
ijcnn1 and MNIST; ours run offline. The benchopt command line is bypassed: we call ``set_objective`` (with their
warm-up call replaced by ours), ``init`` and the jitted ``one_epoch`` directly, and time only ``one_epoch`` after two
untimed epochs of the same length have compiled it, in a pass of its own (the figure's checkpoints may be finer).

    python -m bench.stochastic_peers --checkout /tmp/benchmark_bilevel
"""
from __future__ import annotations

import importlib.util
import sys
import time
from functools import partial

import numpy as np

try:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # float64 on both sides, as our references are
except ImportError:  # the runner says how to install it; importing this module alone must not fail
    jax = jnp = None

# Evaluations per outer iteration of their code, read off solvers/*.py and benchmark_utils (n = n_inner_steps):
# "gradients" are minibatch gradient passes, "products" second-order passes (one jax.vjp of a gradient; SOBA's one vjp
# returns H v and the mixed product together). A vjp of grad g evaluates grad g on its batch first (its primal): a
# gradient pass, counted as such wherever the batch is one no other pass has seen.
THEIR_COUNTS = {
    "soba": lambda n: {"gradients": 2, "products": 1},             # grad g (vjp primal), grad f (w and x)
    # n SGD steps, grad f, then n v-steps and the mixed product: each a vjp on a fresh batch (primal + product)
    "amigo": lambda n: {"gradients": 2 * n + 2, "products": n + 1},
    "f2sa": lambda n: {"gradients": 3 * n + 3, "products": 0},     # n x (grad g at y, grad f at y, grad g at z) + 3
}

# Where their carry holds the inner problem's solution estimate, when not in "inner_var": their F2SA's "inner_var" is
# the penalty copy y (it descends f + lambda g, so at small lambda it is fitted to the validation loss itself) and its
# "inner_approx_star" the z that descends g, our Engine's inner parameters. The figures are taken at z on both sides.
INNER_SOLUTION = {"f2sa": "inner_approx_star"}


def _import_from(checkout: str) -> None:
    if checkout not in sys.path:
        sys.path.insert(0, checkout)  # their solvers import `benchmark_utils` from the benchmark's root


def load_solver(checkout: str, name: str, exponents=None):
    """Their ``Solver`` class from ``<checkout>/solvers/<name>.py`` (a fresh module each call).

    ``exponents`` replaces the step-size decay exponents their ``init`` hands to ``init_lr_scheduler`` (to run their
    code with another schedule, the paper's for one); nothing else changes.
    """
    _import_from(checkout)
    spec = importlib.util.spec_from_file_location(f"benchmark_bilevel_solver_{name}", f"{checkout}/solvers/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if exponents is not None:
        scheduler = module.init_lr_scheduler
        module.init_lr_scheduler = lambda step_sizes, _: scheduler(step_sizes, jnp.array(exponents))
    return module.Solver


def _slice(array, start, batch_size):
    """Their ``jax.lax.dynamic_slice`` of rows [start, start + batch_size), clamped to the data as JAX clamps it."""
    return jax.lax.dynamic_slice_in_dim(array, start, batch_size, axis=0)


def oracles(name: str, problem: dict):
    """``(f_inner, f_outer, unflatten, inner0, outer0)``: JAX versions of ``problem``'s two losses on its data."""
    as_jax = lambda tensor: jnp.asarray(tensor.numpy())  # noqa: E731
    if name == "quadratic":
        a, b = as_jax(problem["matrices"]["a"]), as_jax(problem["matrices"]["b"])
        rho = problem["matrices"]["rho"]
        c, t = as_jax(problem["inner_data"][0]), as_jax(problem["outer_data"][0])

        def f_inner(w, x, start=0, batch_size=1):
            return 0.5 * w @ a @ w - w @ b @ x + (_slice(c, start, batch_size) @ w).mean()

        def f_outer(w, x, start=0, batch_size=1):
            return 0.5 * ((w - _slice(t, start, batch_size)) ** 2).sum(1).mean() + 0.5 * rho * (x ** 2).sum()
        unflatten = lambda w: {"w": w}  # noqa: E731
    elif name.startswith("logreg"):
        rows, labels = map(as_jax, problem["inner_data"])
        val_rows, val_labels = map(as_jax, problem["outer_data"])

        def logistic(w, features, labels_):
            return jax.nn.softplus(-labels_ * (features @ w)).mean()

        def f_inner(w, x, start=0, batch_size=1):
            return logistic(w, _slice(rows, start, batch_size), _slice(labels, start, batch_size)) \
                + 0.5 * (jnp.exp(x) * w ** 2).sum()

        def f_outer(w, x, start=0, batch_size=1):
            return logistic(w, _slice(val_rows, start, batch_size), _slice(val_labels, start, batch_size))
        unflatten = lambda w: {"w": w}  # noqa: E731
    elif name.startswith("datacleaning"):
        rows, noisy, index = map(as_jax, problem["inner_data"])
        val_rows, val_labels = map(as_jax, problem["outer_data"])
        features, classes = problem["inner"]["W"].shape

        def unflatten(w):  # the flat inner vector (their solvers take one array) -> our {"W", "b"}
            return {"W": w[:features * classes].reshape(features, classes), "b": w[features * classes:]}

        def cross_entropy(w, features_, labels_):
            p = unflatten(w)
            logits = features_ @ p["W"] + p["b"]
            return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels_[:, None], axis=1)[:, 0]

        def f_inner(w, x, start=0, batch_size=1):
            weights = jax.nn.sigmoid(x[_slice(index, start, batch_size)])
            losses = cross_entropy(w, _slice(rows, start, batch_size), _slice(noisy, start, batch_size))
            return (weights * losses).mean() + 1e-3 * (unflatten(w)["W"] ** 2).sum()

        def f_outer(w, x, start=0, batch_size=1):
            return cross_entropy(w, _slice(val_rows, start, batch_size), _slice(val_labels, start, batch_size)).mean()
    else:
        raise ValueError(f"oracles: no JAX oracle for problem {name!r}; known: quadratic, logreg*, datacleaning*")
    inner0 = jnp.concatenate([as_jax(v).reshape(-1) for v in problem["inner"].values()])
    outer0 = as_jax(problem["outer"]["x"])
    jit = partial(jax.jit, static_argnames=("batch_size",))
    return jit(f_inner), jit(f_outer), unflatten, inner0, outer0


def build(checkout: str, solver: str, name: str, problem: dict, parameters: dict, exponents=None):
    """Their solver, with its objective set on our problem's data (their warm-up run replaced by ours)."""
    Solver = load_solver(checkout, solver, exponents)
    instance = Solver.get_instance(**parameters)
    f_inner, f_outer, unflatten, inner0, outer0 = oracles(name, problem)
    instance.run_once = lambda *args, **kwargs: None  # benchopt's callback warm-up; we warm up in `run`
    instance.set_objective(f_inner, f_outer, len(problem["inner_data"][0]), len(problem["outer_data"][0]),
                           inner0, outer0)
    instance.unflatten = unflatten
    return instance


def run(instance, steps: int, every: int, figure, n_inner_steps: int, solver: str, epoch: int = 50,
        repeats: int = 1):
    """Run ``steps`` iterations, recording the figure every ``every`` iterations (``steps`` a multiple of ``every``).

    Returns a list of checkpoints ``{"step", "seconds", "gradients", "products", **figure}``. ``seconds`` comes from
    a second, timed pass of the same ``steps`` in jitted epochs of ``epoch`` iterations (fewer if ``steps`` is
    shorter), after two untimed epochs of that length compiled them: the figure's checkpoints may be finer than their
    code's epochs without charging their solver a call per checkpoint. Between the ends of timed epochs the clock is
    interpolated (a step's cost is the same at every step of their code). With ``repeats`` > 1 the timed pass is
    made that many times and the fastest kept, as for ours.
    """
    import torch

    per_step = THEIR_COUNTS[solver](n_inner_steps)
    points = []
    carry = _compiled(instance, every)
    for done in range(every, steps + 1, every):
        carry = jax.block_until_ready(instance.one_epoch(carry, every))
        solution = carry[INNER_SOLUTION.get(solver, "inner_var")]
        inner = {k: torch.tensor(np.asarray(v)) for k, v in instance.unflatten(solution).items()}
        outer = {"x": torch.tensor(np.asarray(carry["outer_var"]))}
        points.append({"step": done, "seconds": None, "gradients": done * per_step["gradients"],
                       "products": done * per_step["products"], **figure(inner, outer)})
    ends, clock = min((_timed_epochs(instance, steps, min(epoch, steps)) for _ in range(repeats)),
                      key=lambda timed: timed[1][-1])
    for point in points:
        point["seconds"] = float(np.interp(point["step"], [0, *ends], [0.0, *clock]))
    return points


def _compiled(instance, length: int):
    """``init()`` after two untimed epochs of ``length`` compiled ``one_epoch`` for it: twice, because ``init``
    hands some carry entries over as Python scalars (the scheduler's step, F2SA's multiplier) that come back from
    the first epoch as arrays, so the second call compiles again."""
    jax.block_until_ready(instance.one_epoch(instance.one_epoch(instance.init(), length), length))
    return instance.init()


def _timed_epochs(instance, steps: int, epoch: int):
    """The steps at which timed epochs of ``epoch`` iterations end (the last may be shorter) and the cumulative
    seconds of the jitted calls at each."""
    lengths = [epoch] * (steps // epoch) + ([steps % epoch] if steps % epoch else [])
    for length in set(lengths):
        _compiled(instance, length)
    carry, ends, clock, seconds = instance.init(), [], [], 0.0
    for length in lengths:
        start = time.perf_counter()
        carry = jax.block_until_ready(instance.one_epoch(carry, length))
        seconds += time.perf_counter() - start
        ends.append((ends[-1] if ends else 0) + length)
        clock.append(seconds)
    return ends, clock


def iterates(instance, steps: int):
    """Their ``(inner, outer)`` after ``steps`` iterations, as our parameter dicts of torch tensors."""
    import torch

    carry = jax.block_until_ready(instance.one_epoch(instance.init(), steps))
    inner = {k: torch.tensor(np.asarray(v)) for k, v in instance.unflatten(carry["inner_var"]).items()}
    return inner, {"x": torch.tensor(np.asarray(carry["outer_var"]))}


def sample_starts(checkout: str, n_samples: int, batch_size: int, draws: int, key_index: int, random_state: int = 1):
    """The first ``draws`` batch starts of their minibatch sampler for one level (``key_index`` 0: inner, 1: outer),
    exactly as ``StochasticJaxSolver.set_objective`` seeds it, clamped as ``dynamic_slice`` clamps them."""
    _import_from(checkout)
    from benchmark_utils.minibatch_sampler import init_sampler  # their sampler

    keys = jax.random.split(jax.random.PRNGKey(random_state), 2)
    sampler, state = init_sampler(n_samples=n_samples, batch_size=batch_size, key=keys[key_index])

    def draw(state, _):
        start, *_, state = sampler(state)
        return state, start

    _, starts = jax.lax.scan(draw, state, None, length=draws)
    return np.minimum(np.asarray(starts), n_samples - batch_size)
