"""The ``bilevel`` command. ``bilevel compare PROBLEM [SPEC ...]`` compares hypergradient methods on a problem.

    bilevel compare quadratic cg:5,10,20 neumann:5,20,100 unroll:1,5 finite_difference first_order
    bilevel compare logistic --plot logistic.png --json logistic.json   # files are written only when asked
    bilevel compare mypackage.problems:make_problem cg:10      # your own (importable or in this folder)
    bilevel compare --list                                      # built-in problems and registered methods
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from .. import methods
from .problems import make_problem, problem_names
from .run import compare
from .specs import SpecError

DEFAULT_SPECS = ["cg:5,10,20", "neumann:5,20,100", "unroll:1,5", "finite_difference", "first_order"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bilevel", description="Tools of the bilevel library.")
    commands = parser.add_subparsers(dest="command", required=True)
    comparison = commands.add_parser(
        "compare", help="compare hypergradient methods on a bilevel problem",
        description="Relative error and cosine against a reference, time, peak memory and pass counts per method. "
                    "SPEC grammar: name[:item,...] with items positive integer counts (iterations of cg/neumann, "
                    "steps of unroll; one run each) or key=value settings (applied to every run), e.g. "
                    "'cg:5,10,20' 'unroll:1,5,lr=0.05' 'finite_difference:lr=0.1' 'first_order'.")
    comparison.add_argument("problem", nargs="?", help=f"a problem ({', '.join(problem_names())}) or module:function")
    comparison.add_argument("specs", nargs="*", help=f"method specs (default: {' '.join(DEFAULT_SPECS)})")
    comparison.add_argument("--repeats", type=int, default=5, help="timed calls per method; the median is reported")
    comparison.add_argument("--seed", type=int, default=0, help="seed of the problem's data and initialisation")
    comparison.add_argument("--exact-max-size", type=int, default=2000,
                            help="largest inner size for the dense reference; above it a long CG run is used")
    comparison.add_argument("--plot", default="", help="save error vs cost as an image here (default: no plot)")
    comparison.add_argument("--json", default="", help="save the report as JSON here (default: none)")
    comparison.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    comparison.add_argument("--list", action="store_true", help="list the problems and the registered methods")
    return parser


def _check_writable(path: str, flag: str) -> None:
    """Refuse an output path whose folder does not exist now, not after the whole comparison has run."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: the folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path}: the folder {folder} is not writable; choose another path")


def run_compare(args) -> int:
    if args.list:
        print("problems:", ", ".join(problem_names()))
        print("methods:", ", ".join(methods.names()))
        return 0
    if not args.problem:
        raise ValueError("give a problem: one of " + ", ".join(problem_names()) + " or module:function")
    for path, flag in ((args.plot, "--plot"), (args.json, "--json")):
        if path:
            _check_writable(path, flag)
    if args.threads:
        torch.set_num_threads(args.threads)
    added = ":" in args.problem and os.getcwd() not in sys.path  # module:function from here, as `python -m` finds it
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        problem = make_problem(args.problem, args.seed)
    finally:
        if added:
            sys.path.remove(os.getcwd())
    report = compare(problem, args.specs or DEFAULT_SPECS, repeats=args.repeats, exact_max_size=args.exact_max_size)
    print(report.table())
    if args.plot:
        if report.plot(args.plot):
            print(f"\nplot: {os.path.abspath(args.plot)}")
        else:
            print("\nplot skipped: matplotlib is not installed (pip install matplotlib)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report.to_dict(), handle, indent=1)
        print(f"json: {os.path.abspath(args.json)}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run_compare(args)
    except (SpecError, ValueError, TypeError, ImportError, OSError, RuntimeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"bilevel {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
