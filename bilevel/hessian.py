"""Products with the second-derivative blocks of the inner loss, from one gradient graph.

``grad_w g(w, x)`` is computed once with ``create_graph=True``; every product then differentiates that graph again:
``H v = d<grad_w g, v>/dw`` and ``(d^2 g / dx dw) v = d<grad_w g, v>/dx``. Reusing one graph costs one forward
pass for the whole solve and makes every product see the same dropout masks.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from . import params as P
from .distributed import mean_across_ranks
from .params import Params


class InnerHessian:
    """Hessian-vector and mixed-derivative-vector products of ``inner_loss`` at ``(w, x)`` on one batch."""

    def __init__(self, inner_loss: Callable, inner_params: Params, outer_params: Params, batch: Any):
        self.inner_params, self.outer_params = inner_params, outer_params
        loss = inner_loss(inner_params, outer_params, batch)
        self.gradient = P.grad(loss, inner_params, create_graph=True)
        self.products = 0

    def _differentiate(self, vector: Params, wrt: Params) -> Params:
        pairs = [(g, vector[k]) for k, g in self.gradient.items() if g.requires_grad]
        if not pairs:  # the gradient does not depend on anything: the product is zero on every rank
            return P.zeros_like(wrt)
        outputs, grad_outputs = zip(*pairs)
        grads = torch.autograd.grad(outputs, list(wrt.values()), grad_outputs=grad_outputs, retain_graph=True,
                                    allow_unused=True)
        self.products += 1
        return mean_across_ranks(P.fill_missing_grads([None if g is None else g.detach() for g in grads], wrt))

    def matvec(self, vector: Params) -> Params:
        """``H_ww v``, the inner Hessian times ``v``."""
        return self._differentiate(vector, self.inner_params)

    def mixed(self, vector: Params) -> Params:
        """``(d^2 g / dx dw) v``, a vector shaped like the outer parameters."""
        return self._differentiate(vector, self.outer_params)
