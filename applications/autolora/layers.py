"""`GatedLoraLinear`: a frozen linear layer plus k rank-1 LoRA components mixed by softmax gates.

    y = base(x) + (lora_alpha / k) * dropout(x) @ A^T @ diag(a) @ B^T,    a = softmax(lora_logits)

A (k x in) is Kaiming-uniform as in PEFT, B (out x k) starts at zero so the wrapped model starts equal to the
base model, and the logits start at zero (uniform gates). This is AutoLoRA's parametrisation
(Zhang et al., 2024, arXiv 2403.09113): the gates a_j are the selection variables of the outer level.

The layer wraps (never subclasses) ``nn.Linear`` or GPT-2's ``Conv1D`` (weight stored as (in, out)).
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GatedLoraLinear", "linear_features", "is_adaptable"]


def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for the layer itself
        return None
    return Conv1D


def is_adaptable(module: nn.Module) -> bool:
    """True for the layer types a gated LoRA can wrap: ``nn.Linear`` and transformers' ``Conv1D``."""
    conv1d = _conv1d_class()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def linear_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an ``nn.Linear`` or a ``Conv1D`` (whose weight is (in, out))."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_adaptable(module):
        in_features, out_features = module.weight.shape
        return in_features, out_features
    raise TypeError(f"linear_features: expected nn.Linear or transformers Conv1D, got {type(module).__name__}")


class GatedLoraLinear(nn.Module):
    """A frozen linear layer with a gated rank-k LoRA update.

    Example::

        layer = GatedLoraLinear(nn.Linear(16, 32), k=8, lora_alpha=16)
        y = layer(torch.randn(4, 16))            # equals the base layer at init (B = 0)
        layer.gates()                            # softmax(lora_logits), shape (k,)

    ``fixed_gates`` (a (k,) tensor or None) replaces the softmax, which turns the layer into plain LoRA:
    one-hot-on-the-first-r gates give PEFT LoRA of rank r with scaling lora_alpha / k.
    """

    def __init__(self, base_layer: nn.Module, k: int = 8, lora_alpha: float = 16.0, lora_dropout: float = 0.0):
        super().__init__()
        if not is_adaptable(base_layer):
            raise TypeError(f"GatedLoraLinear: base_layer must be nn.Linear or transformers Conv1D, "
                            f"got {type(base_layer).__name__}")
        if k < 1:
            raise ValueError(f"GatedLoraLinear: k must be >= 1, got {k}")
        self.base_layer = base_layer
        for p in self.base_layer.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = linear_features(base_layer)
        self.k = k
        self.lora_alpha = lora_alpha
        self.scaling = lora_alpha / k
        weight = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(k, self.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, k, dtype=weight.dtype, device=weight.device))
        self.lora_logits = nn.Parameter(torch.zeros(k, dtype=weight.dtype, device=weight.device))
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.fixed_gates: torch.Tensor | None = None
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A Kaiming-uniform (a = sqrt(5), as nn.Linear and PEFT), B and the logits zero."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        nn.init.zeros_(self.lora_logits)

    def gates(self) -> torch.Tensor:
        """The k mixing weights: ``fixed_gates`` when set, else softmax(lora_logits)."""
        if self.fixed_gates is not None:
            return self.fixed_gates.to(self.lora_logits)
        return torch.softmax(self.lora_logits, dim=-1)

    def delta_weight(self) -> torch.Tensor:
        """The dense update (out x in) that the LoRA branch adds to the weight."""
        return (self.lora_B * (self.scaling * self.gates())) @ self.lora_A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        h = self.lora_dropout(x).to(self.lora_A.dtype) @ self.lora_A.t()  # (..., k)
        h = h * (self.scaling * self.gates())
        return result + (h @ self.lora_B.t()).to(result.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}, scaling={self.scaling:g}"
