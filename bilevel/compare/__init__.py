"""Compare hypergradient methods on one bilevel problem: error against a reference, time, memory and cost.

    from bilevel.compare import compare, make_problem
    report = compare(make_problem("quadratic"), "cg:5,10,20 neumann:5,20 unroll:1,5 finite_difference first_order")
    print(report.table())

The rooms: :mod:`.problems` (the functional snapshot :class:`BilevelProblem` and problems by name),
:mod:`.specs` (the method spec grammar), :mod:`.run` (measuring), :mod:`.report` (table, JSON, plot),
:mod:`.memory` (peak memory), :mod:`.cli` (the ``bilevel compare`` command).
"""
from .problems import PROBLEMS, BilevelProblem, make_problem, problem_names, register_problem
from .report import ComparisonReport, MethodReport
from .run import compare, cosine, measure, reference_hypergradient, relative_error
from .specs import SpecError, parse_spec, parse_specs

__all__ = ["compare", "measure", "reference_hypergradient", "relative_error", "cosine", "BilevelProblem",
           "PROBLEMS", "make_problem", "problem_names", "register_problem", "ComparisonReport", "MethodReport",
           "SpecError", "parse_spec", "parse_specs"]
