"""The ``bilevel`` command. ``bilevel compare PROBLEM [SPEC ...]`` compares hypergradient methods on a problem.

    bilevel compare quadratic cg:5,10,20 neumann:5,20,100 unroll:1,5 finite_difference first_order
    bilevel compare logistic --plot logistic.png --json logistic.json
    bilevel compare mypackage.problems:make_problem cg:10      # your own: a function returning a BilevelProblem
    bilevel compare --list                                      # built-in problems and registered methods
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

import torch

from . import methods
from .builtin_problems import PROBLEMS, BilevelProblem, make_problem
from .comparison import compare
from .method_specs import SpecError

DEFAULT_SPECS = ["cg:5,10,20", "neumann:5,20,100", "unroll:1,5", "finite_difference", "first_order"]


def load_problem(name: str, seed: int) -> BilevelProblem:
    """A built-in problem, or ``module:function`` (called with ``seed=``) returning a BilevelProblem."""
    if ":" not in name:
        return make_problem(name, seed)
    module_name, _, attribute = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"problem '{name}': cannot load {attribute} from {module_name} ({error})") from None
    problem = factory(seed=seed)
    if not isinstance(problem, BilevelProblem):
        raise ValueError(f"problem '{name}': {attribute}(seed=...) returned {type(problem).__name__}, "
                         "expected a bilevel.builtin_problems.BilevelProblem")
    return problem


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bilevel", description="Tools of the bilevel library.")
    commands = parser.add_subparsers(dest="command", required=True)
    comparison = commands.add_parser(
        "compare", help="compare hypergradient methods on a bilevel problem",
        description="Relative error and cosine against a reference, time, peak memory and pass counts per method. "
                    "SPEC grammar: name[:item,...] with items positive integer counts (iterations of cg/neumann, "
                    "steps of unroll; one run each) or key=value settings (applied to every run), e.g. "
                    "'cg:5,10,20' 'unroll:1,5,lr=0.05' 'finite_difference:lr=0.1' 'first_order'.")
    comparison.add_argument("problem", nargs="?", help=f"built-in ({', '.join(PROBLEMS)}) or module:function")
    comparison.add_argument("specs", nargs="*", help=f"method specs (default: {' '.join(DEFAULT_SPECS)})")
    comparison.add_argument("--repeats", type=int, default=5, help="timed calls per method; the median is reported")
    comparison.add_argument("--seed", type=int, default=0, help="seed of the problem's data and initialisation")
    comparison.add_argument("--exact-max-size", type=int, default=2000,
                            help="largest inner size for the dense reference; above it a long CG run is used")
    comparison.add_argument("--plot", default="compare.png", help="where to save error vs cost ('' for no plot)")
    comparison.add_argument("--json", default="", help="also save the report as JSON here")
    comparison.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    comparison.add_argument("--list", action="store_true", help="list built-in problems and registered methods")
    return parser


def run_compare(args) -> int:
    if args.list:
        print("problems:", ", ".join(PROBLEMS))
        print("methods:", ", ".join(methods.names()))
        return 0
    if not args.problem:
        raise ValueError("give a problem: one of " + ", ".join(PROBLEMS) + " or module:function")
    if args.threads:
        torch.set_num_threads(args.threads)
    problem = load_problem(args.problem, args.seed)
    report = compare(problem, args.specs or DEFAULT_SPECS, repeats=args.repeats, exact_max_size=args.exact_max_size)
    print(report.table())
    if args.plot:
        if report.plot(args.plot):
            print(f"\nplot: {args.plot}")
        else:
            print("\nplot skipped: matplotlib is not installed (pip install matplotlib)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report.to_dict(), handle, indent=1)
        print(f"json: {args.json}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run_compare(args)
    except (SpecError, ValueError, ImportError) as error:
        print(f"bilevel {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
