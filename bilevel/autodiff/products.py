"""Products with the second-derivative blocks of the inner loss: exact (double backward) and by finite differences.

``grad_w g(w, x)`` is computed with ``create_graph=True`` and differentiated again for every product:
``H v = d<grad_w g, v>/dw`` and ``(d^2 g / dx dw) v = d<grad_w g, v>/dx``. On a plain batch the gradient graph is
built once and reused by every product (one forward pass per solve, the same dropout masks for every product). On
:class:`~bilevel.MicroBatches` each product rebuilds the graph one micro-batch at a time, trading a forward
and backward pass per micro-batch and product for memory; the RNG replay keeps the masks identical.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .. import params as P
from ..distributed import mean_across_ranks
from ..params import Params
from .batches import MicroBatches, mean_over_parts
from .gradients import loss_gradients


class InnerHessian:
    """Hessian-vector and mixed-derivative-vector products of ``inner_loss`` at ``(w, x)`` on a batch."""

    def __init__(self, inner_loss: Callable, inner_params: Params, outer_params: Params, batch: Any):
        self.inner_loss, self.batch = inner_loss, batch
        self.inner_params, self.outer_params = inner_params, outer_params
        self.products = 0
        self._loss, self._gradient = None, None  # the whole batch's; micro-batches rebuild theirs per product
        if not isinstance(batch, MicroBatches):
            loss, self._gradient = self._loss_and_gradient(batch)
            self._loss = loss.detach()

    def _loss_and_gradient(self, piece: Any) -> tuple[torch.Tensor, Params]:
        loss = self.inner_loss(self.inner_params, self.outer_params, piece)
        return loss, P.grad(loss, self.inner_params, create_graph=True)

    def _differentiate(self, vector: Params, wrt: Params, averaged_with: Params | None = None) -> Params:
        """d<grad_w g, vector>/d wrt averaged over micro-batches and ranks; ``averaged_with`` joins the same
        collective (its keys must not clash with ``wrt``'s)."""
        def on_part(piece, last: bool):
            gradient = self._gradient if self._gradient is not None else self._loss_and_gradient(piece)[1]
            return list(_product(gradient, vector, wrt).values())

        total = dict(zip(wrt, mean_over_parts(self.batch, on_part)))
        self.products += 1
        return mean_across_ranks({**total, **(averaged_with or {})})

    def matvec(self, vector: Params) -> Params:
        """``H_ww v``, the inner Hessian times ``v``."""
        return self._differentiate(vector, self.inner_params)

    def mixed(self, vector: Params) -> Params:
        """``(d^2 g / dx dw) v``, a vector shaped like the outer parameters."""
        return self._differentiate(vector, self.outer_params)

    def matvec_mixed_and_gradient(self, vector: Params) -> tuple[Params, Params, Params | None, torch.Tensor | None]:
        """``H_ww v`` and ``(d^2 g / dx dw) v`` from one backward pass through the gradient's graph (one product),
        with ``grad_w g`` (detached) and the loss on the batch, all averaged over the ranks in one collective. The
        gradient and the loss are None on micro-batches, where no whole-batch gradient is kept."""
        joint = {**{("w", k): t for k, t in self.inner_params.items()},
                 **{("x", k): t for k, t in self.outer_params.items()}}
        extra = None
        if self._gradient is not None:
            gradient = {("g", k): g.detach() for k, g in self._gradient.items()}
            dtype = next(iter(gradient.values())).dtype
            extra = {**gradient, ("loss",): self._loss.to(dtype).reshape(1)}  # the global mean, as the gradient's
        both = self._differentiate(vector, joint, averaged_with=extra)
        hvp, mixed = {k: both[("w", k)] for k in self.inner_params}, {k: both[("x", k)] for k in self.outer_params}
        if extra is None:
            return hvp, mixed, None, None
        return hvp, mixed, {k: both[("g", k)] for k in self._gradient}, both[("loss",)].reshape(())


def _product(gradient: Params, vector: Params, wrt: Params) -> Params:
    """d<gradient, vector>/d wrt, keeping the gradient's graph for the next product."""
    pairs = [(g, vector[k]) for k, g in gradient.items() if g.requires_grad]
    if not pairs:  # the gradient depends on nothing: the product is zero (on every rank alike)
        return P.zeros_like(wrt)
    outputs, grad_outputs = zip(*pairs)
    grads = torch.autograd.grad(outputs, list(wrt.values()), grad_outputs=grad_outputs, retain_graph=True,
                                allow_unused=True)
    return P.fill_missing_grads([None if g is None else g.detach() for g in grads], wrt)


def finite_difference_mixed_product(inner_loss, inner_params, outer_params, batch, direction, epsilon):
    """``(d^2 g / dx dw) v`` by a central difference of ``grad_x g`` along ``v``, with ``e = epsilon / ||v||``.

    Returns ``(product, e)``; the product is exact when g is bilinear in (w, x) and has O(e^2) error otherwise.
    The perturbed weights are new tensors, so ``inner_params`` is never changed (no drift).
    """
    size = P.norm(direction)
    if size == 0:
        return P.zeros_like(outer_params), 0.0
    e = epsilon / size
    _, (plus,) = loss_gradients(inner_loss, P.detached(P.add(inner_params, direction, e)), outer_params, batch,
                                (outer_params,), across_ranks=False)
    _, (minus,) = loss_gradients(inner_loss, P.detached(P.add(inner_params, direction, -e)), outer_params, batch,
                                 (outer_params,), across_ranks=False)
    return P.scale(mean_across_ranks(P.sub(plus, minus)), 1.0 / (2 * e)), float(e)  # the two passes, reduced once


def finite_difference_products(inner_loss, inner_params, outer_params, batch, direction, epsilon):
    """``(H v, (d^2 g / dx dw) v, e)`` by central differences of the full gradient of g along ``v``, ``e = epsilon/||v||``.

    Two forward+backward passes (at w + e v and w - e v, each differentiated in w and x) and no double backward; exact
    when g is quadratic in w (bilinear coupling), O(e^2) error otherwise. ``inner_params`` is never changed.
    """
    size = P.norm(direction)
    if size == 0:
        return P.zeros_like(inner_params), P.zeros_like(outer_params), 0.0
    e = epsilon / size
    passes = []
    for sign in (1.0, -1.0):
        point = P.detached(P.add(inner_params, direction, sign * e), requires_grad=True)
        _, (by_w, by_x) = loss_gradients(inner_loss, point, outer_params, batch, (point, outer_params),
                                         across_ranks=False)
        passes.append((by_w, by_x))
    (plus_w, plus_x), (minus_w, minus_x) = passes
    difference = mean_across_ranks({**{("w", k): v for k, v in P.sub(plus_w, minus_w).items()},
                                    **{("x", k): v for k, v in P.sub(plus_x, minus_x).items()}})  # one collective
    hvp = {k: difference[("w", k)] / (2 * e) for k in inner_params}
    mixed = {k: difference[("x", k)] / (2 * e) for k in outer_params}
    return hvp, mixed, float(e)
