"""SOBA on ``logreg_ijcnn1`` (22 inner parameters, 64-row batches): how far compiling closes the per-step gap to JAX.

There a step is a few microseconds of arithmetic and the per-step time is per-operation overhead: theirs is one XLA
program scanning an epoch of steps, the Engine eager PyTorch. This bench takes the overhead apart on the same
batches (their sampler's) and step sizes, SOBA in their order (w, v and x moved from the same point):

- theirs: their SOBA, jitted epochs of ``--epoch`` steps;
- the Engine: ``bench.stochastic_peers.ours`` (our ``soba`` method, one inner SGD step, reused inner gradient);
- the step alone: the same step as one ``torch.func`` function of ``(w, x, v, t, batch starts)``, eager;
- compiled blocks: that function over ``--block`` consecutive steps, compiled by ``torch.compile`` (inductor),
  a block per call (``--block 1``: a call per step), with the seconds its first call took to compile;
- a compiled scan: the step traced once inside ``torch._higher_order_ops.scan`` over all ``--steps`` steps, one
  call, with inductor's C++ wrapper (so the loop runs in C++, not Python); once with inductor's vectorized code and
  once with scalar code (``cpp.simdlen=1``), which is faster here: a 64-row batch is a gather, and the vectorized
  gathers go through the stack sixteen lanes at a time.

Every row's iterates after the run are checked against theirs (the same numbers, to rounding) before any time is
reported. One core for the process, float64, the fastest of ``--repeats`` timed passes per row.

    python -m bench.stochastic_peers.compiled_steps --checkout /tmp/benchmark_bilevel
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import bilevel

from . import ours, settings, theirs
from .__main__ import PROBLEMS

NAME = "logreg_ijcnn1"


def soba_step(problem):
    """``step(w, x, v, t, inner_start, outer_start) -> (w, x, v, t)``: one SOBA step in their order on the rows
    ``[start, start + batch)``, with rho_t = step t^-1/2 and gamma_t = outer t^-1/2."""
    inner_loss, outer_loss = problem["inner_loss"], problem["outer_loss"]
    # copies: a scan's body may not read two views of one tensor (the problem's splits are views of one array)
    inner_data, outer_data = (tuple(d.clone() for d in problem[k]) for k in ("inner_data", "outer_data"))
    step, outer_step = settings.STEPS[NAME]["step_size"], settings.outer_step(NAME, "soba")
    rows = torch.arange(settings.BATCH_SIZE)

    def soba(w, x, v, t, inner_start, outer_start):
        inner_batch = tuple(d[inner_start + rows] for d in inner_data)
        outer_batch = tuple(d[outer_start + rows] for d in outer_data)
        grad_w_g = lambda w_, x_: torch.func.grad(inner_loss)(w_, x_, inner_batch)  # noqa: E731
        direction, pullback = torch.func.vjp(grad_w_g, w, x)
        hvp, mixed = pullback(v)
        grad_w_f, grad_x_f = torch.func.grad(outer_loss, argnums=(0, 1))(w, x, outer_batch)
        rho, gamma = step * t ** -0.5, outer_step * t ** -0.5
        w = {n: w[n] - rho * direction[n] for n in w}
        v = {n: v[n] - rho * (hvp[n] + grad_w_f[n]) for n in v}
        x = {n: x[n] - gamma * (mixed[n] + grad_x_f[n]) for n in x}
        return w, x, v, t + 1

    return soba


def soba_block(problem, steps: int):
    """``block(w, x, v, t, inner_starts, outer_starts) -> (w, x, v, t)``: ``steps`` SOBA steps, a Python loop
    (unrolled when compiled)."""
    soba = soba_step(problem)

    def block(w, x, v, t, inner_starts, outer_starts):
        for k in range(steps):
            w, x, v, t = soba(w, x, v, t, inner_starts[k], outer_starts[k])
        return w, x, v, t

    return block


def soba_scan(problem):
    """``run(w, x, v, t, inner_starts, outer_starts) -> (w, x, v, t)``: a SOBA step per start, as one
    ``torch._higher_order_ops.scan`` (the step traced once, the loop inside the compiled program)."""
    from torch._higher_order_ops import scan

    soba = soba_step(problem)

    def body(carry, starts):
        w, x, v, t = soba(*carry, *starts)
        return (w, x, v, t), t.clone()  # a scan's output may not alias its carry

    def run(w, x, v, t, inner_starts, outer_starts):
        return scan(body, (w, x, v, t), (inner_starts, outer_starts))[0]

    return run


def run_blocks(problem, block, size: int, inner_starts, outer_starts, steps: int):
    """``(w, x, seconds)`` after ``steps`` steps taken ``size`` at a time by ``block``."""
    w = {k: v.clone() for k, v in problem["inner"].items()}
    x = {k: v.clone() for k, v in problem["outer"].items()}
    v, t = {k: torch.zeros_like(u) for k, u in w.items()}, torch.tensor(1.0, dtype=torch.float64)
    inner_starts, outer_starts = torch.as_tensor(inner_starts), torch.as_tensor(outer_starts)
    start = time.perf_counter()
    for first in range(0, steps, size):
        w, x, v, t = block(w, x, v, t, inner_starts[first:first + size], outer_starts[first:first + size])
    return w, x, time.perf_counter() - start


def largest_difference(ours_iterates, theirs_iterates) -> float:
    return max(float((a[k] - b[k]).abs().max()) for a, b in zip(ours_iterates, theirs_iterates) for k in a)


def table(checkout: str, steps: int, block_sizes, epoch: int, repeats: int) -> str:
    problem = PROBLEMS[NAME]()
    inner_starts = theirs.sample_starts(checkout, len(problem["inner_data"][0]), settings.BATCH_SIZE, steps, 0)
    outer_starts = theirs.sample_starts(checkout, len(problem["outer_data"][0]), settings.BATCH_SIZE, steps, 1)
    instance = theirs.build(checkout, "soba", NAME, problem, settings.their_parameters(NAME, "soba"))
    reference = theirs.iterates(instance, steps)
    their_seconds = theirs.run(instance, steps, steps, problem["figure"], settings.N_INNER_STEPS, "soba", epoch,
                               repeats)[-1]["seconds"]
    rows = [(f"theirs: JAX, jitted epochs of {min(epoch, steps)}", their_seconds, None, None)]
    engine = ours.run(NAME, problem, "soba", steps, steps, inner_starts, outer_starts, repeats)[-1]["seconds"]
    rows.append(("ours: the Engine (eager)", engine, None, None))  # its figures are checked by the main runner
    eager = soba_block(problem, 1)
    runs = [run_blocks(problem, eager, 1, inner_starts, outer_starts, steps) for _ in range(repeats)]
    rows.append(("ours: the step alone, torch.func, eager", min(r[2] for r in runs), None,
                 largest_difference(runs[0][:2], reference)))
    def compiled_row(label, compiled, size):
        """The row of ``compiled`` taking ``size`` steps a call: its first call's seconds (compilation), then the
        fastest of ``repeats`` runs."""
        begin = time.perf_counter()
        compiled(*_zeros(problem), torch.as_tensor(inner_starts[:size]), torch.as_tensor(outer_starts[:size]))
        compile_seconds = time.perf_counter() - begin
        runs = [run_blocks(problem, compiled, size, inner_starts, outer_starts, steps) for _ in range(repeats)]
        return label, min(r[2] for r in runs), compile_seconds, largest_difference(runs[0][:2], reference)

    for size in block_sizes:
        if steps % size:
            raise SystemExit(f"--steps ({steps}) must be a multiple of every --block ({size})")
        rows.append(compiled_row(f"ours: torch.compile, {size} step{'s' if size > 1 else ''} per call",
                                 torch.compile(soba_block(problem, size), dynamic=False), size))
    for code, options in (("", {}), (", scalar code", {"cpp.simdlen": 1})):
        rows.append(compiled_row(f"ours: torch.compile, a scan over all {steps} steps (C++ wrapper{code})",
                                 torch.compile(soba_scan(problem), dynamic=False, fullgraph=True,
                                               options={"cpp_wrapper": True, **options}), steps))
    lines = [f"SOBA on {NAME}, {steps} steps; the fastest of {repeats} passes per row",
             "", "| row | us / step | ratio to theirs | compile (s) | largest difference from their iterates |",
             "|---|---|---|---|---|"]
    for label, seconds, compile_seconds, difference in rows:
        lines.append(f"| {label} | {1e6 * seconds / steps:.1f} | {seconds / their_seconds:.2f}x | "
                     f"{'' if compile_seconds is None else f'{compile_seconds:.1f}'} | "
                     f"{'' if difference is None else f'{difference:.1e}'} |")
        assert difference is None or difference < 1e-10, f"{label}: iterates differ from theirs by {difference:.3g}"
    return "\n".join(lines)


def _zeros(problem):
    """A start point for the compiling call (its result is discarded)."""
    w = {k: v.clone() for k, v in problem["inner"].items()}
    return (w, {k: v.clone() for k, v in problem["outer"].items()}, {k: torch.zeros_like(u) for k, u in w.items()},
            torch.tensor(1.0, dtype=torch.float64))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", default="/tmp/benchmark_bilevel",
                        help="a clone of github.com/benchopt/benchmark_bilevel (kept outside this repository)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--block", type=int, nargs="+", default=[1, 10], help="steps per compiled call, a row each")
    parser.add_argument("--epoch", type=int, default=50, help="iterations per jitted call of their code")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if theirs.jax is None:
        parser.error("jax is not installed: pip install -e '.[benchopt]'")
    if not os.path.isdir(os.path.join(args.checkout, "solvers")):
        parser.error(f"--checkout {args.checkout!r} has no solvers/ folder: git clone "
                     "https://github.com/benchopt/benchmark_bilevel there first")
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    bilevel.keep_freed_memory()
    before = os.getloadavg()
    text = table(args.checkout, args.steps, args.block, args.epoch, args.repeats)
    loads = " -> ".join(" ".join(f"{a:.2f}" for a in load) for load in (before, os.getloadavg()))
    print(f"load average {loads}\n\n{text}")


if __name__ == "__main__":
    main()
