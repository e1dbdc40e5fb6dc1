"""SOBA: the implicit hypergradient tracked by one step on its linear system per outer step (Dagréou et al., 2022)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .. import params as P
from ..autodiff import InnerHessian, MicroBatches, compiled_products, finite_difference_products, loss_gradients
from ..validation import require_decay_exponent, require_positive
from .base import HypergradientMethod, HypergradientResult, register

HESSIANS = ("exact", "finite_difference")


@register("soba")
@dataclass
class SOBA(HypergradientMethod):
    """SOBA (Dagréou, Ablin, Vaiter and Moreau, "A framework for bilevel optimization that enables stochastic and
    global variance reduction algorithms", NeurIPS 2022): v ~ -H^-1 grad_w f is carried in the state and moved by one
    step per call instead of being solved for. At call t = 1, 2, ... with w the inner parameters as they are now:

        D_x     = grad_x f(w, x) + (d^2 g / dx dw) v_t             (returned as the hypergradient)
        v_{t+1} = v_t - rho_t (H v_t + grad_w f(w, x)),   rho_t = step * t^-decay,   v_1 = 0

    These are the paper's directions D_x and D_v. At the fixed point v = -H^-1 grad_w f, D_x is the implicit
    hypergradient. ``step=None`` takes the inner optimizer's live learning rate, as the paper uses one step rho for
    the inner variable and v. ``decay=None`` keeps rho constant (the paper's constant-step theorem); ``decay=0.4`` is
    its decreasing schedule for rho (the paper pairs it with t^-0.6 on the outer step: give the outer optimizer that
    scheduler). Use ``decay`` with a fixed ``step``; a ``step`` taken from a scheduled inner optimizer already decays.

    Where this differs from the paper: the paper moves (w, v, x) at once from directions taken at (w_t, v_t, x_t),
    with independent samples for each. By default the Engine first takes its ``inner_steps`` real inner steps (any
    optimizer), then calls this method, so D_v and D_x are taken at the updated w, both on the last inner step's
    batch. With ``inner_steps=1`` and SGD at lr rho this is SOBA with the inner variable updated first (Gauss-Seidel
    order). With ``EngineConfig(reuse_inner_gradient=True)`` and the exact products, the Engine instead takes its
    inner step with the gradient grad_w g(w_t, x_t) this call computed anyway: the paper's order, all three moved
    from the same point, and one pass fewer.

    ``hessian="finite_difference"`` takes H v and (d^2 g / dx dw) v from one central difference of the gradient of g
    along v (perturbation e = epsilon / ||v||): two gradient passes, no double backward, so it runs where double
    backward does not (fused attention kernels); exact when g is quadratic in w. Cost per call: one outer
    forward+backward, plus one inner forward+backward with graph and one backward through it for both products
    (exact), or two inner passes (finite difference).

    ``compile_products=True`` (exact products) takes the inner gradient, the loss and both products from one
    ``torch.compile``d call (a ``torch.func`` vjp of the gradient, :mod:`bilevel.autodiff.compiled`): the same
    numbers, faster on large parameters after seconds of compilation, for losses without randomness that
    torch.compile can trace (micro-batches stay eager, and so does a loss it fails on, after one warning).

    >>> Engine(inner, outer, method=MethodSpec("soba", {"hessian": "finite_difference"}))
    """

    inner_lr = "step"

    step: Optional[float] = None
    decay: Optional[float] = None
    hessian: str = "exact"
    epsilon: float = 0.01
    compile_products: bool = False

    def __post_init__(self):
        if self.step is not None:
            require_positive("SOBA", step=self.step)
        require_decay_exponent("SOBA", decay=self.decay)
        require_positive("SOBA", epsilon=self.epsilon)
        if self.hessian not in HESSIANS:
            raise ValueError(f"SOBA: hessian must be one of {', '.join(HESSIANS)}, got {self.hessian!r}")
        if not isinstance(self.compile_products, bool):
            raise ValueError(f"SOBA: compile_products must be True or False, got {self.compile_products!r}")
        if self.compile_products and self.hessian != "exact":
            raise ValueError("SOBA: compile_products compiles the exact products; pass hessian='exact' or "
                             "compile_products=False")

    @property
    def needs_second_derivatives(self) -> bool:
        return self.hessian == "exact"

    def compute(self, inner_loss, outer_loss, inner_params, outer_params, inner_batch, outer_batch, state=None):
        calls = 1 if state is None else state["calls"] + 1
        v = P.zeros_like(P.detached(inner_params)) if state is None else state["v"]
        outer, (grad_x, grad_w) = loss_gradients(outer_loss, inner_params, outer_params, outer_batch,
                                                 (outer_params, inner_params))
        inner_grads = None
        products = None  # compiled where asked for and torch.compile can take the loss, else eager
        if self.compile_products and not isinstance(inner_batch, MicroBatches):
            products = compiled_products(inner_loss, inner_params, outer_params, inner_batch, v)
        if products is not None:
            hvp, mixed, inner_grads, loss = products
            diagnostics = {"gradient_evaluations": 2, "hvp": 1, "inner_loss": loss}
        elif self.hessian == "exact":
            hessian = InnerHessian(inner_loss, inner_params, outer_params, inner_batch)
            hvp, mixed, inner_grads, loss = hessian.matvec_mixed_and_gradient(v)  # one backward, one collective
            diagnostics = {"gradient_evaluations": 2, "hvp": hessian.products}
            if loss is not None:
                diagnostics["inner_loss"] = loss
        else:
            hvp, mixed, e = finite_difference_products(inner_loss, inner_params, outer_params, inner_batch, v,
                                                       self.epsilon)
            diagnostics = {"gradient_evaluations": 3, "perturbation": e}
        rho = self.step * calls ** -(self.decay or 0.0)
        grads = {k: grad_x[k] + mixed[k] for k in grad_x}
        direction = P.add(hvp, grad_w)  # H v + grad_w f: v's step, and the residual of v's system
        moved = P.detached(P.add(v, direction, -rho))
        size, remainder = float(P.norm(grad_w)), float(P.norm(direction))
        residual = remainder / size if size > 0 else remainder  # of v_t's system, as the implicit methods report
        diagnostics.update(outer_loss=outer, residual=residual, v_step=rho)
        return HypergradientResult(grads, diagnostics, {"v": moved, "calls": calls}, inner_grads=inner_grads)
