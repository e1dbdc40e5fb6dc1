"""Implicit differentiation, written once; the linear solver is a parameter (CG, Neumann, dense, or your own)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .. import params as P
from ..autodiff import InnerHessian, loss_gradients
from ..solvers import ConjugateGradientSolver
from .base import HypergradientMethod, HypergradientResult, register


class ImplicitMethod(HypergradientMethod):
    """Hypergradient from the implicit function theorem at an inner optimum w* (grad_w g(w*, x) = 0):

        d f(w*(x), x) / dx = grad_x f - (d^2 g / dx dw) H^-1 grad_w f,   H = d^2 g / dw^2

    The result is only as good as the assumption that ``inner_params`` is (near) the inner optimum; train the inner
    level first. ``diagnostics["residual"]`` is the relative residual of the solve ||H q - grad_w f|| / ||grad_w f||.
    Subclasses provide ``make_solver()``; a solver is any callable ``solver(matvec, b, x0=None) -> (x, SolveInfo)``.
    Cost: one outer forward+backward, one inner forward+backward with graph, one Hessian-vector product per solver
    iteration, one mixed product.
    """

    needs_second_derivatives = True
    warm_start: bool = False

    def make_solver(self) -> Callable:
        raise NotImplementedError

    def compute(self, inner_loss, outer_loss, inner_params, outer_params, inner_batch, outer_batch, state=None):
        outer, (grad_x, grad_w) = loss_gradients(outer_loss, inner_params, outer_params, outer_batch,
                                                 (outer_params, inner_params))
        hessian = InnerHessian(inner_loss, inner_params, outer_params, inner_batch)
        start = state if self.warm_start and state is not None else None
        solution, info = self.make_solver()(hessian.matvec, grad_w, start)
        mixed = hessian.mixed(solution)
        grads = {k: grad_x[k] - mixed[k] for k in grad_x}
        diagnostics = {"gradient_evaluations": 2, "hvp": hessian.products, "residual": info.residual,
                       "iterations": info.iterations, "converged": info.converged, "outer_loss": outer}
        return HypergradientResult(grads, diagnostics, P.detached(solution))


@register("implicit")
@dataclass
class Implicit(ImplicitMethod):
    """Implicit differentiation with any solver ``solver(matvec, b, x0=None) -> (x, SolveInfo)``.

    Without a solver it uses conjugate gradient with its default settings (the same as method "cg").
    """

    solver: Any = field(default_factory=ConjugateGradientSolver)
    warm_start: bool = False

    def __post_init__(self):
        if not callable(self.solver):
            raise ValueError("Implicit: solver must be a callable solver(matvec, b, x0=None) -> (x, SolveInfo), "
                             f"got {self.solver!r}")

    def make_solver(self):
        return self.solver
