"""AmIGO: implicit differentiation whose linear solve is warm-started from the previous outer step (Arbel & Mairal)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional

from .. import params as P
from ..autodiff import InnerHessian, MicroBatches, compiled_matvec, loss_gradients, per_step_batches
from ..solvers import ConjugateGradientSolver, GradientDescentSolver
from ..validation import require_positive, require_positive_integer
from .base import HypergradientResult, register
from .implicit import ImplicitMethod

SOLVERS = ("gd", "cg")


@register("amigo")
@dataclass
class AmIGO(ImplicitMethod):
    """AmIGO (Arbel and Mairal, "Amortized implicit differentiation for stochastic bilevel optimization", ICLR 2022):
    both inner problems are warm-started from the previous outer step and solved only a few steps further.

    Outer step k: the inner parameters continue from where step k-1 left them (the Engine's ``inner_steps`` real
    inner steps: the paper's T steps of its inner algorithm A_k), then the linear system H q = grad_w f at the new
    point gets ``iterations`` = M steps of the paper's algorithm B_k, started from q_{k-1} (q_0 = 0):

        gd:  q_{m+1} = q_m - step (H q_m - grad_w f)       (AmIGO-GD; the paper writes z = -q)
        cg:  up to M conjugate-gradient iterations from q_{k-1}   (AmIGO-CG; stops at relative residual 1e-10)

    and the hypergradient is grad_x f - (d^2 g / dx dw) q_k. The paper treats T and M as parameters; M = 10 is our
    default. ``step=None`` takes the inner optimizer's live learning rate (H is the inner loss's curvature, so a step
    that is stable for the inner problem is stable here).

    Sampling: the paper draws a fresh minibatch for every step of B_k. With ``fresh_batches=True`` (AmIGO-GD only) so
    does this method: it asks the Engine for M + 1 fresh inner batches (:class:`~bilevel.StepBatches` in the
    functional API), one per linear-system step and the last for the mixed product. By default the M steps and the
    mixed product share the batch the Engine hands over (the last inner step's), which costs one gradient pass
    instead of M + 1; with minibatches q_k then solves that batch's system and the warm start averages across batches.
    ``compile_products=True`` takes each of the M products as one ``torch.compile``d call (a ``torch.func`` vjp of
    the gradient, :mod:`bilevel.autodiff.compiled`): the same numbers, about twice as fast on large parameters after
    seconds of compilation, for losses without randomness that torch.compile can trace (micro-batches stay eager,
    and so does a loss it fails on, after one warning).
    Cost per call: one outer and one inner forward+backward, M Hessian-vector products, one mixed product
    (``fresh_batches`` or ``compile_products``: one outer forward+backward, and per product one inner
    forward+backward with it).
    """

    main_count = "iterations"
    inner_lr = "step"
    warm_start = True

    solver: str = "gd"
    iterations: int = 10
    step: Optional[float] = None
    fresh_batches: bool = False
    compile_products: bool = False

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"AmIGO: solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        for key in ("fresh_batches", "compile_products"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"AmIGO: {key} must be True or False, got {getattr(self, key)!r}")
        if self.fresh_batches and self.solver == "cg":
            raise ValueError("AmIGO: fresh_batches needs solver='gd' (conjugate gradient needs one fixed system); "
                             "pass solver='gd' or fresh_batches=False")
        require_positive_integer("AmIGO", iterations=self.iterations)
        if self.step is not None:
            require_positive("AmIGO", step=self.step)

    def missing_settings(self) -> list[str]:
        """CG takes no step: only AmIGO-GD needs the inner learning rate."""
        return super().missing_settings() if self.solver == "gd" else []

    def make_solver(self):
        if self.solver == "cg":
            return ConjugateGradientSolver(self.iterations)
        return GradientDescentSolver(self.iterations, self.step)

    def batches_per_call(self) -> tuple[int, int]:
        return (self.iterations + 1, 1) if self.fresh_batches else super().batches_per_call()

    def compute(self, inner_loss, outer_loss, inner_params, outer_params, inner_batch, outer_batch, state=None):
        if not (self.fresh_batches or self.compile_products):
            return super().compute(inner_loss, outer_loss, inner_params, outer_params, inner_batch, outer_batch, state)
        if self.fresh_batches:
            *system, last = per_step_batches(inner_batch, self.iterations + 1, "AmIGO",
                                             f"{self.iterations} linear-system steps and the mixed product")
            batches = iter(system)
        else:  # one batch for every product (CG may take one more than M, from its warm start)
            batches, last = itertools.repeat(inner_batch), inner_batch
        outer, (grad_x, grad_w) = loss_gradients(outer_loss, inner_params, outer_params, outer_batch,
                                                 (outer_params, inner_params))
        products = []

        def matvec(vector):  # the solver's m-th product, on the m-th batch (a fresh one with fresh_batches)
            batch = next(batches)
            products.append(batch)
            product = None
            if self.compile_products and not isinstance(batch, MicroBatches):
                product = compiled_matvec(inner_loss, inner_params, outer_params, batch, vector)
            if product is not None:
                return product
            return InnerHessian(inner_loss, inner_params, outer_params, batch).matvec(vector)  # eager

        solution, info = self.make_solver()(matvec, grad_w, state)
        mixed = InnerHessian(inner_loss, inner_params, outer_params, last).mixed(solution)
        grads = {k: grad_x[k] - mixed[k] for k in grad_x}
        diagnostics = {"gradient_evaluations": len(products) + 2, "hvp": len(products) + 1,
                       "residual": info.residual, "iterations": info.iterations, "converged": info.converged,
                       "outer_loss": outer}
        return HypergradientResult(grads, diagnostics, P.detached(solution))
