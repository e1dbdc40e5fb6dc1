"""Command line: run every (problem, solver, side), write the table and the plot under bench/results/."""
from __future__ import annotations

import argparse
import json
import os

import torch

import bilevel
from bench import stochastic

from . import lockstep, ours, report, settings, theirs

PROBLEMS = {
    "quadratic": stochastic.quadratic,
    "logreg": stochastic.logreg,
    "datacleaning": stochastic.datacleaning,
    # ijcnn1's full shape (49,990 training and 91,701 test rows as validation): the >= 1e5-sample timing problem
    "logreg_ijcnn1": lambda: stochastic.logreg(train=49_990, validation=91_701),
    # 1e5 inner parameters (1,000 features x 100 classes): the timing problem whose step is compute, not overhead
    "datacleaning_wide": stochastic.datacleaning_wide,
}
TIMING = ("logreg_ijcnn1", "datacleaning_wide")  # both sides' solvers only, --timing-steps steps


def run_problem(name: str, checkout: str, solvers, steps: int, every: int, past: int = 0,
                epoch: int = 50, repeats: int = 1, compiled: tuple = ()) -> dict:
    """Both sides for ``steps`` iterations; ours of a solver both have ``past`` more, to see where it reaches their
    final figure when that is after their last step. The wall times are the fastest of ``repeats`` rounds, each round
    running every side of a solver once in turn (the first side rotating), so that a machine whose speed drifts
    charges the drift to both sides alike."""
    problem = PROBLEMS[name]()
    n_inner, n_outer = len(problem["inner_data"][0]), len(problem["outer_data"][0])
    draws = (steps + past) * (3 * settings.N_INNER_STEPS + 3)  # more than any solver draws from one level
    inner_starts = theirs.sample_starts(checkout, n_inner, settings.BATCH_SIZE, draws, 0)
    outer_starts = theirs.sample_starts(checkout, n_outer, settings.BATCH_SIZE, draws, 1)
    rows = {}
    for solver in solvers:
        sides = _sides(checkout, name, problem, solver, steps, past, every, epoch, inner_starts, outer_starts,
                       compiled)
        runs = {key: [] for key in sides}
        for round_ in range(repeats):
            keys = list(sides)
            for key in keys[round_ % len(keys):] + keys[:round_ % len(keys)]:
                runs[key].append(sides[key]())
        rows.update({key: report.fastest(points) for key, points in runs.items()})
        print(f"{name} {solver}: " + ", ".join(f"{side} {report.figure_name(p)}={p[-1][report.figure_name(p)]:.4g}"
                                                 for (s, side), p in rows.items() if s == solver), flush=True)
    return rows


def _sides(checkout, name, problem, solver, steps, past, every, epoch, inner_starts, outer_starts,
           compiled) -> dict:
    """``{(row, side): run}``: ours, theirs where they have the solver, and their variants of it; each ``run()``
    one run returning its checkpoints."""
    sides = {(solver, "ours"): lambda: ours.run(name, problem, solver, steps + past if solver in settings.BOTH_SIDES
                                                else steps, every, inner_starts, outer_starts, 1, compiled)}
    if solver in settings.BOTH_SIDES:
        instance = theirs.build(checkout, solver, name, problem, settings.their_parameters(name, solver))
        sides[(solver, "theirs")] = lambda: theirs.run(instance, steps, every, problem["figure"],
                                                       settings.N_INNER_STEPS, solver, epoch)
    for variant, (base, exponents, overrides) in settings.VARIANTS.items():
        if base == solver:
            variant_instance = theirs.build(checkout, base, name, problem,
                                            {**settings.their_parameters(name, base), **overrides},
                                            exponents=exponents)
            sides[(variant, "theirs")] = (lambda instance=variant_instance, base=base: theirs.run(
                instance, steps, every, problem["figure"], settings.N_INNER_STEPS, base, epoch))
    return sides


def lockstep_check(checkout: str, name: str, steps: int) -> float:
    """Largest |ours - theirs| over (w, x) after ``steps`` SOBA iterations in their loop order on their batches."""
    problem = PROBLEMS[name]()
    inner_starts = theirs.sample_starts(checkout, len(problem["inner_data"][0]), settings.BATCH_SIZE, steps, 0)
    outer_starts = theirs.sample_starts(checkout, len(problem["outer_data"][0]), settings.BATCH_SIZE, steps, 1)
    w, x = lockstep.soba(problem, name, inner_starts, outer_starts, steps)
    tw, tx = theirs.iterates(theirs.build(checkout, "soba", name, problem, settings.their_parameters(name, "soba")),
                             steps)
    return max(float((a[k] - b[k]).abs().max()) for a, b in ((w, tw), (x, tx)) for k in a)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkout", default="/tmp/benchmark_bilevel",
                        help="a clone of github.com/benchopt/benchmark_bilevel (kept outside this repository)")
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--solvers", nargs="+", default=list(settings.BOTH_SIDES + settings.OURS_ONLY),
                        choices=list(settings.BOTH_SIDES + settings.OURS_ONLY))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--every", type=int, default=10,
                        help="iterations between checkpoints of the figure (both sides)")
    parser.add_argument("--epoch", type=int, default=50,
                        help="iterations per jitted call of their code in its timed pass")
    parser.add_argument("--timing-steps", type=int, default=200,
                        help="steps on the timing problems (" + ", ".join(TIMING) + ")")
    parser.add_argument("--past", type=float, default=0.2,
                        help="ours of a solver both sides have runs this fraction of the steps longer, to find where "
                             "it reaches their final figure if that is after their last step")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch's threads; 1 also pins the process (their JAX included) to one core")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds per solver on the timing problems (" + ", ".join(TIMING) + "), each running "
                             "every side once in turn; the fastest run of a side gives its wall time")
    parser.add_argument("--compile-products", action="store_true",
                        help="our SOBA and AmIGO with compile_products=True: their Hessian-vector products "
                             "compiled")
    parser.add_argument("--compile-gradients", action="store_true",
                        help="our Engine with EngineConfig(compile_gradients=True): every gradient pass compiled")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (by default bilevel.keep_freed_memory() keeps freed "
                             "blocks in the process, for both sides: it is one process)")
    parser.add_argument("--out", default="bench/results/stochastic_peers")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.checkout, "solvers")):
        parser.error(f"--checkout {args.checkout!r} has no solvers/ folder: git clone "
                     "https://github.com/benchopt/benchmark_bilevel there first")
    if theirs.jax is None:
        parser.error("jax is not installed: pip install -e '.[benchopt]'")
    if args.steps % args.every or args.timing_steps % args.every:
        parser.error(f"--steps and --timing-steps must be multiples of --every ({args.every})")
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)
    if not args.default_malloc:
        bilevel.keep_freed_memory()
    if args.threads == 1 and hasattr(os, "sched_setaffinity"):  # JAX on CPU has no working one-thread switch: one
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # core for the process, both sides (Linux only)
    results, loads = {}, {}
    for name in args.problems:
        timing = name in TIMING
        solvers = [s for s in args.solvers if s in settings.BOTH_SIDES] if timing else args.solvers
        before = os.getloadavg()
        steps = args.timing_steps if timing else args.steps
        past = int(round(steps * args.past / args.every)) * args.every
        results[name] = run_problem(name, args.checkout, solvers, steps, args.every, past, args.epoch,
                                    args.repeats if timing else 1,
                                    ("products",) * args.compile_products + ("gradients",) * args.compile_gradients)
        loads[name] = (before, os.getloadavg())
    text = report.table(results, loads, args.threads)
    difference = lockstep_check(args.checkout, "quadratic", 200)
    text += (f"\nOur SOBA core in their loop order on their batches (quadratic, 200 steps): largest |ours - theirs| "
             f"over (w, x) = {difference:.2e}\n")
    with open(os.path.join(args.out, "table.md"), "w") as handle:
        handle.write(text)
    with open(os.path.join(args.out, "points.json"), "w") as handle:
        json.dump({p: {f"{s}|{side}": pts for (s, side), pts in rows.items()} for p, rows in results.items()},
                  handle)
    report.plot(results, os.path.join(args.out, "curves.png"))
    print(text)


if __name__ == "__main__":
    main()
