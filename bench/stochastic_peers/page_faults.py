"""AmIGO on ``datacleaning_wide``: the Engine's step against the same step written by hand, with page faults.

Measures what ``bilevel.keep_freed_memory()`` is for: run once as it is and once with ``--keep``; both sides do the
same passes over the 100,100 parameters, so a difference in time comes with a difference in minor page faults.
Interleaved rounds on one core, the same batches on both sides.

    python -m bench.stochastic_peers.page_faults [--keep]
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import torch

import bilevel
from bench import stochastic

from . import ours

STEPS, INNER, LR = 20, 10, 0.5


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def by_hand(problem, inner_starts, outer_starts, steps: int):
    """AmIGO-GD with fresh batches, as the Engine runs it (10 inner SGD steps, 10 linear-system steps, the mixed
    product), in plain torch.autograd; returns its (w, x)."""
    g, f = problem["inner_loss"], problem["outer_loss"]
    rows, labels, index = problem["inner_data"]
    val_rows, val_labels = problem["outer_data"]
    inner_batch = lambda s: (rows[s:s + 64], labels[s:s + 64], index[s:s + 64])  # noqa: E731
    w = {k: v.clone().requires_grad_() for k, v in problem["inner"].items()}
    x = {k: v.clone().requires_grad_() for k, v in problem["outer"].items()}
    q = {k: torch.zeros_like(v) for k, v in w.items()}
    draws_in, draws_out = iter(inner_starts), iter(outer_starts)
    for _ in range(steps):
        for _ in range(INNER):
            grads = torch.autograd.grad(g(w, x, inner_batch(next(draws_in))), list(w.values()))
            with torch.no_grad():
                for t, d in zip(w.values(), grads):
                    t.sub_(d, alpha=LR)
        s = next(draws_out)
        gx, *gw = torch.autograd.grad(f(w, x, (val_rows[s:s + 64], val_labels[s:s + 64])),
                                      [x["x"], *w.values()], allow_unused=True)
        gw = dict(zip(w, gw))
        for _ in range(INNER):
            grads = torch.autograd.grad(g(w, x, inner_batch(next(draws_in))), list(w.values()), create_graph=True)
            products = torch.autograd.grad(grads, list(w.values()), grad_outputs=list(q.values()))
            q = {k: q[k] - LR * (h - gw[k]) for k, h in zip(w, products)}
        grads = torch.autograd.grad(g(w, x, inner_batch(next(draws_in))), list(w.values()), create_graph=True)
        mixed, = torch.autograd.grad(grads, [x["x"]], grad_outputs=list(q.values()))
        with torch.no_grad():
            x["x"].sub_(mixed, alpha=-0.01)
    return w, x


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="call bilevel.keep_freed_memory() first")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if args.keep:
        bilevel.keep_freed_memory()
    problem = stochastic.datacleaning_wide()
    gen = torch.Generator().manual_seed(0)
    inner_starts = torch.randint(0, 5000 - 64, (STEPS * 40,), generator=gen).tolist()
    outer_starts = torch.randint(0, 2000 - 64, (STEPS * 40,), generator=gen).tolist()
    by_hand(problem, inner_starts, outer_starts, 2)
    ours.run("datacleaning_wide", problem, "amigo", 2, 2, inner_starts, outer_starts)
    print(f"keep_freed_memory: {args.keep}; load average {' '.join(f'{a:.2f}' for a in os.getloadavg())}\n")
    print("| round | by hand (ms / step) | faults / step | Engine (ms / step) | faults / step |\n|---|---|---|---|---|")
    for round_ in range(args.rounds):
        before, start = _faults(), time.perf_counter()
        by_hand(problem, inner_starts, outer_starts, STEPS)
        hand_ms, hand_faults = 1e3 * (time.perf_counter() - start) / STEPS, (_faults() - before) / STEPS
        before = _faults()
        points = ours.run("datacleaning_wide", problem, "amigo", STEPS, STEPS, inner_starts, outer_starts)
        engine_ms, engine_faults = 1e3 * points[-1]["seconds"] / STEPS, (_faults() - before) / STEPS
        print(f"| {round_ + 1} | {hand_ms:.1f} | {hand_faults:.0f} | {engine_ms:.1f} | {engine_faults:.0f} |")


if __name__ == "__main__":
    main()
