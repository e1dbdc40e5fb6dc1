"""Second derivatives through attention: select a kernel that supports them, or fail with the fix.

PyTorch's fused attention kernels (flash and memory-efficient SDPA; CPU SDPA picks its flash kernel too) implement
one backward but no double backward. Methods that differentiate a gradient (unroll, CG, Neumann, exact) run under the
math SDPA backend, which is differentiable twice. FlashAttention-2 from ``transformers`` cannot be switched that way,
so models using it are rejected before the first step.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

_FIX = ("load the model with attn_implementation='eager' (or 'sdpa', which this library runs on its math kernel), "
        "or use a method without second derivatives such as method='finite_difference'")


class SecondDerivativeError(RuntimeError):
    """An operation in the model cannot be differentiated twice."""


@contextmanager
def second_order_kernels() -> Iterator[None]:
    """Run scaled-dot-product attention on the math backend, which supports double backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def check_second_order_support(module: torch.nn.Module, method_name: str) -> None:
    """Fail before step 1 when ``module`` uses an attention kernel that cannot be differentiated twice."""
    for name, sub in module.named_modules():
        config = getattr(sub, "config", None)
        implementation = getattr(config, "_attn_implementation", None)
        if implementation is not None and "flash" in str(implementation):
            where = name or type(module).__name__
            raise SecondDerivativeError(
                f"method '{method_name}' needs second derivatives, but {where} uses attn_implementation="
                f"'{implementation}', which has no double backward: {_FIX}")


def explain_double_backward_error(error: RuntimeError, method_name: str) -> RuntimeError:
    """Turn PyTorch's 'derivative ... not implemented' into an error that names the fix; other errors pass."""
    message = str(error)
    if "derivative for" in message and "not implemented" in message:
        op = message.split("derivative for", 1)[1].split("is not implemented")[0].strip(" .'")
        return SecondDerivativeError(
            f"method '{method_name}' needs second derivatives, but the operation {op} has none: {_FIX}")
    return error
