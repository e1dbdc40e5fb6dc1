"""One gradient and one Hessian-vector product of ``datacleaning_wide``'s inner loss, eager PyTorch against jitted JAX.

The product is also timed as ``torch.compile`` of a ``torch.func`` vjp of the gradient (inductor; compiled once
before timing), as ``compile_products=True`` takes it, and the gradient as ``loss_gradients`` takes it for a loss
marked by ``bilevel.autodiff.compile_gradients`` (``EngineConfig(compile_gradients=True)``). The per-step wall
times of bench/stochastic_peers are sums of these primitives plus each library's own work; timing them alone says
which part of a gap is PyTorch's eager autograd and which is ours. The last row is the float64 matrix product under
all of them, a batch's rows (64 x 1,000) by the weights (1,000 x 100): its library (MKL for PyTorch on x86) sets a
floor no compilation moves. Both sides on one core, float64, the same 64-row
batches, 100 calls each after 5 untimed ones, the fastest of ``--repeats`` rounds.

    python -m bench.stochastic_peers.primitives
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import bilevel
import bilevel.autodiff
from bench import stochastic

from . import theirs
from .theirs import jax, jnp

BATCH = 64
COMPILED = "hessian-vector product, torch.compile of torch.func"
COMPILED_GRADIENT = "gradient, compile_gradients"
MATRIX_PRODUCT = "matrix product, batch rows @ weights"


def torch_primitives(problem):
    """``{name: f(i)}``: the gradient in w, and H v by a backward through the gradient's graph (the Engine's)."""
    loss, (rows, labels, index) = problem["inner_loss"], problem["inner_data"]
    batches = [(rows[s:s + BATCH], labels[s:s + BATCH], index[s:s + BATCH])
               for s in range(0, len(rows) - BATCH, BATCH)]
    gen = torch.Generator().manual_seed(0)
    w = {k: (0.01 * torch.randn(v.shape, generator=gen, dtype=v.dtype)).requires_grad_()
         for k, v in problem["inner"].items()}
    x = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype).requires_grad_() for k, v in problem["outer"].items()}
    v = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in w.values()]

    def gradient(i):
        return torch.autograd.grad(loss(w, x, batches[i % len(batches)]), list(w.values()))

    def hvp(i):
        grads = torch.autograd.grad(loss(w, x, batches[i % len(batches)]), list(w.values()), create_graph=True)
        return torch.autograd.grad(grads, list(w.values()), grad_outputs=v)

    def functional_hvp(weights, outer, batch, direction):  # the same H v by torch.func: a vjp of the gradient
        return torch.func.vjp(lambda w_: torch.func.grad(loss)(w_, outer, batch), weights)[1](direction)[0]

    compiled = torch.compile(functional_hvp, dynamic=False)
    detached, direction = {k: t.detach() for k, t in w.items()}, dict(zip(w, v))

    def compiled_hvp(i):
        return list(compiled(detached, {k: t.detach() for k, t in x.items()}, batches[i % len(batches)],
                             direction).values())

    marked, outer = bilevel.autodiff.compile_gradients(loss), {k: t.detach() for k, t in x.items()}

    def compiled_gradient(i):
        return list(bilevel.autodiff.loss_gradients(marked, detached, outer, batches[i % len(batches)],
                                                    (detached,))[1][0].values())

    weights = next(t.detach() for t in w.values() if t.dim() == 2)

    def matrix_product(i):
        return [batches[i % len(batches)][0] @ weights]

    return ({"gradient": gradient, "hessian-vector product": hvp, COMPILED: compiled_hvp,
             COMPILED_GRADIENT: compiled_gradient, MATRIX_PRODUCT: matrix_product}, (w, x, v, len(batches), rows))


def jax_primitives(problem, w, x, v, n_batches, rows):
    """The same two in JAX, jitted, on the side-by-side runner's own oracle (:func:`theirs.oracles`, flat inner
    vector): ``jax.grad`` and a ``jax.vjp`` of it (as their solvers take H v)."""
    f_inner = theirs.oracles("datacleaning_wide", problem)[0]
    grad = jax.grad(f_inner)
    gradient = jax.jit(lambda w_, x_, start: grad(w_, x_, start, BATCH))
    hvp = jax.jit(lambda w_, x_, start, v_: jax.vjp(lambda u: grad(u, x_, start, BATCH), w_)[1](v_)[0])
    flat = lambda tensors: jnp.concatenate([jnp.asarray(t.detach().numpy()).reshape(-1) for t in tensors])  # noqa
    weights, outer, direction = flat(w.values()), flat(x.values()), flat(v)
    product = lambda i: jax.block_until_ready(hvp(weights, outer, (i % n_batches) * BATCH, direction))  # noqa: E731
    gradient_at = lambda i: jax.block_until_ready(gradient(weights, outer, (i % n_batches) * BATCH))  # noqa: E731
    matmul = jax.jit(lambda a, b: a @ b)
    weight = jnp.asarray(next(t for t in w.values() if t.dim() == 2).detach().numpy())
    row_batches = [jnp.asarray(rows[i * BATCH:(i + 1) * BATCH].numpy()) for i in range(n_batches)]
    matrix_product = lambda i: jax.block_until_ready(matmul(row_batches[i % n_batches], weight))  # noqa: E731
    return {"gradient": gradient_at, "hessian-vector product": product, COMPILED: product,
            COMPILED_GRADIENT: gradient_at, MATRIX_PRODUCT: matrix_product}


def seconds_per_call(function, calls: int = 100) -> float:
    for i in range(5):
        function(i)
    start = time.perf_counter()
    for i in range(calls):
        function(i)
    return (time.perf_counter() - start) / calls


def table(repeats: int = 3) -> str:
    """The markdown table (after checking that both sides compute the same numbers)."""
    problem = stochastic.datacleaning_wide()
    ours, state = torch_primitives(problem)
    theirs = jax_primitives(problem, *state)
    for name in ours:  # the same numbers first: both sides compute one function
        flat_ours = np.concatenate([t.detach().numpy().reshape(-1) for t in ours[name](3)])  # flat, as theirs
        difference = float(np.abs(np.asarray(theirs[name](3)).reshape(-1) - flat_ours).max())
        assert difference < 1e-10, f"{name}: PyTorch and JAX differ by {difference:.3g}"
    lines = ["| primitive | PyTorch eager (ms) | JAX jit (ms) | ratio |", "|---|---|---|---|"]
    for name in ours:
        mine = min(seconds_per_call(ours[name]) for _ in range(repeats))
        their = min(seconds_per_call(theirs[name]) for _ in range(repeats))
        lines.append(f"| {name} | {1e3 * mine:.3f} | {1e3 * their:.3f} | {mine / their:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    """One core for the whole process (JAX ignores its own thread flags) and freed memory kept, as the side-by-side
    runner does."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if jax is None:
        parser.error("jax is not installed: pip install -e '.[benchopt]'")
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    bilevel.keep_freed_memory()
    text = table(args.repeats)
    print(f"load average {' '.join(f'{a:.2f}' for a in os.getloadavg())}\n\n{text}")


if __name__ == "__main__":
    main()
