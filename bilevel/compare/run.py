"""Compare hypergradient methods on one bilevel problem: error against a reference, time, memory, cost.

    from bilevel.compare import compare, make_problem
    report = compare(make_problem("quadratic"), "cg:5,10,20 neumann:5,20 unroll:1,5 finite_difference first_order")
    print(report.table())
    report.plot("compare.png")

For each method run: relative error ||g - r|| / ||r|| and cosine <g, r> / (||g|| ||r||) against the reference r,
median wall time over ``repeats`` calls (after one warm-up call), peak memory of one more call (see
:mod:`bilevel.compare.memory` for what is measured on CPU and on CUDA), and the counts the method reports in its
diagnostics: loss passes (forward+backward, ``gradient_evaluations``) and Hessian-vector products (``hvp``). An
unroll of K steps reports no ``hvp``: its backward through K steps costs about K of them, shown as ``~K``.
The reference is, in order of preference: the problem's own (a closed form), the exact dense solve (method
``exact``) when the inner problem has at most ``exact_max_size`` parameters, or a long CG run.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Dict, List

import torch

from .. import params as P
from ..hypergradient import hypergradient
from ..methods import ConjugateGradient, Exact, MethodSpec
from .memory import peak_memory
from .problems import BilevelProblem
from .report import ComparisonReport, MethodReport
from .specs import SpecError, parse_specs


def relative_error(estimate: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor]) -> float:
    """||estimate - reference|| / ||reference|| over all entries."""
    return float(P.norm(P.sub(estimate, reference)) / P.norm(reference))


def cosine(estimate: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor]) -> float:
    """<estimate, reference> / (||estimate|| ||reference||) over all entries (nan when one of them is zero)."""
    denominator = float(P.norm(estimate) * P.norm(reference))
    return float(P.dot(estimate, reference)) / denominator if denominator > 0 else math.nan


def reference_hypergradient(problem: BilevelProblem, exact_max_size: int = 2000,
                            cg_iterations: int = 1000) -> tuple[Dict[str, torch.Tensor], str]:
    """(reference, description): the problem's own, the dense solve if it fits, else a long CG run."""
    if problem.reference is not None:
        return problem.reference, problem.reference_name
    n_inner, _ = problem.sizes()
    method = Exact(max_size=exact_max_size) if n_inner <= exact_max_size else ConjugateGradient(cg_iterations, 1e-12)
    result = _run(problem, method)
    if isinstance(method, Exact):
        return result.grads, f"exact dense solve (method exact, {n_inner} x {n_inner} Hessian)"
    return result.grads, (f"long CG run (cg:{cg_iterations}, {result.diagnostics['iterations']} iterations used, "
                          f"residual {result.diagnostics['residual']:.1e}; {n_inner} inner parameters exceed "
                          f"exact_max_size={exact_max_size})")


def _run(problem: BilevelProblem, method, return_result: bool = True):
    return hypergradient(problem.inner_loss, problem.outer_loss, problem.inner_params, problem.outer_params,
                         problem.inner_batch, problem.outer_batch, method, return_result=return_result)


def _device(problem: BilevelProblem) -> torch.device:
    return next(iter(problem.inner_params.values())).device


def measure(problem: BilevelProblem, spec: MethodSpec, reference: Dict[str, torch.Tensor],
            repeats: int = 3) -> MethodReport:
    """One row: build the method from ``spec`` (the problem's inner_lr as default lr), run and measure it."""
    report = MethodReport(spec.label)
    device = _device(problem)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        method = spec.build(inner_lr=problem.inner_lr)
        result = _run(problem, method)  # warm-up, and the values reported
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            _run(problem, method, return_result=False)
            sync()
            times.append(time.perf_counter() - start)
        report.peak_bytes, _ = peak_memory(lambda: _run(problem, method), device)
    except Exception as error:  # a diverged series or a bad setting is a result of the comparison, not a crash
        report.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return report
    report.relative_error = relative_error(result.grads, reference)
    report.cosine = cosine(result.grads, reference)
    report.seconds = statistics.median(times)
    report.passes = result.diagnostics.get("gradient_evaluations", math.nan)
    if "hvp" in result.diagnostics:
        report.hvp = result.diagnostics["hvp"]
    elif "hvp_estimate" in result.diagnostics:  # a backward through K steps: about K products
        report.hvp, report.hvp_estimated = result.diagnostics["hvp_estimate"], True
    else:
        report.hvp = 0
    return report


def compare(problem: BilevelProblem, specs: List[str] | str, repeats: int = 3,
            exact_max_size: int = 2000) -> ComparisonReport:
    """Run every method of ``specs`` (see :mod:`bilevel.compare.specs`) on ``problem`` and compare with a reference."""
    if not isinstance(problem, BilevelProblem):
        raise TypeError(f"compare: problem must be a BilevelProblem, got {type(problem).__name__}")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"compare: repeats must be an integer >= 1, got {repeats!r}")
    runs = parse_specs(specs)
    for run in runs:  # a method that models the inner step needs the step size: say so before anything runs
        if problem.inner_lr is None and run.build().missing_settings():
            raise SpecError(f"method spec '{run.label}': problem '{problem.name}' has no inner_lr, and "
                            f"{run.name} models the inner step; give it as {run.name}:lr=...")
    reference, reference_name = reference_hypergradient(problem, exact_max_size)
    device = _device(problem)
    memory = peak_memory(lambda: None, device)[1]
    report = ComparisonReport(problem.name, problem.description, reference_name, memory,
                              f"{device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    report.rows = [measure(problem, spec, reference, repeats) for spec in runs]
    return report
