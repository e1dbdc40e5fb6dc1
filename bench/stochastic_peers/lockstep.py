"""Our SOBA's directions stepped in their loop order on their samples: a differential check of the two codes.

Their SOBA takes D_w, D_v and D_x all at (w_t, v_t, x_t) on one inner and one outer batch and moves the three
together (the paper's order); the Engine steps w first and takes D_v and D_x at w_{t+1} (docs/methods.md). Here our
method's ``compute`` (the functional core the Engine calls) is driven in their order, so the iterates must equal
theirs to rounding when both see the same batches and the same step sizes.
"""
from __future__ import annotations

import torch

import bilevel

from . import settings


def soba(problem: dict, problem_name: str, inner_starts, outer_starts, steps: int):
    """``(w, x)`` after ``steps`` iterations of SOBA (rho_t = step t^-1/2, gamma_t = outer step t^-1/2)."""
    step, outer = settings.STEPS[problem_name]["step_size"], settings.outer_step(problem_name, "soba")
    method = bilevel.methods.build(bilevel.MethodSpec("soba", {"step": step, "decay": 0.5}))
    w = {k: v.clone().requires_grad_(True) for k, v in problem["inner"].items()}
    x = {k: v.clone().requires_grad_(True) for k, v in problem["outer"].items()}
    batch = lambda tensors, start: tuple(t[start:start + settings.BATCH_SIZE] for t in tensors)  # noqa: E731
    state = None
    for t in range(1, steps + 1):
        inner_batch = batch(problem["inner_data"], int(inner_starts[t - 1]))
        outer_batch = batch(problem["outer_data"], int(outer_starts[t - 1]))
        result = method.compute(problem["inner_loss"], problem["outer_loss"], w, x, inner_batch, outer_batch, state)
        grad_w = torch.autograd.grad(problem["inner_loss"](w, x, inner_batch), list(w.values()))
        with torch.no_grad():
            for value, grad in zip(w.values(), grad_w):
                value -= step * t ** -0.5 * grad
            for name, value in x.items():
                value -= outer * t ** -0.5 * result.grads[name]
        state = result.state
    return {k: v.detach() for k, v in w.items()}, {k: v.detach() for k, v in x.items()}
