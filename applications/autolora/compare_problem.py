"""AutoLoRA's search as a ``bilevel compare`` problem (``bilevel compare autolora``, through the entry point that
``pyproject.toml`` declares in the group ``bilevel.problems``): the core library never imports its application."""
from __future__ import annotations

import torch
import transformers

from bilevel.compare.problems import BilevelProblem, minimize_lbfgs

from .config import AutoLoraConfig
from .injection import inject_gated_lora, lower_parameters, upper_parameters

def make_problem(seed: int = 0, batch_size: int = 8, seq_len: int = 16, weight_decay: float = 0.05) -> BilevelProblem:
    """Gated LoRA (k = 4) on query/value of a 2-layer hidden-16 BERT built from config, in float64.

    The inner loss is cross-entropy plus 0.5 * weight_decay * ||w||^2 on the LoRA weights and head (AdamW's decay
    written into the loss), solved by L-BFGS: without the decay the inner Hessian at a trained point has negative
    eigenvalues (measured: -0.01 against a largest of 0.2), where the implicit function theorem does not apply.
    """
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=seq_len, num_labels=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                     attn_implementation="eager")
    model = transformers.BertForSequenceClassification(config).to(torch.float64).eval()
    inject_gated_lora(model, AutoLoraConfig(k=4, target_modules=["query", "value"], lora_dropout=0.0))
    model.eval()  # the injected layers are new modules in training mode
    g = torch.Generator().manual_seed(seed)
    make = lambda: {"input_ids": torch.randint(0, 100, (batch_size, seq_len), generator=g),
                    "labels": torch.randint(0, 2, (batch_size,), generator=g)}
    train, val = make(), make()

    def outer_loss(inner, outer, batch):
        return torch.func.functional_call(model, {**inner, **outer}, kwargs=batch).loss

    def inner_loss(inner, outer, batch):
        return outer_loss(inner, outer, batch) + 0.5 * weight_decay * sum((v ** 2).sum() for v in inner.values())

    lower = {k: v.detach().clone().requires_grad_(True) for k, v in lower_parameters(model).items()}
    upper = {k: v.detach().clone() for k, v in upper_parameters(model).items()}
    minimize_lbfgs(lambda: inner_loss(lower, upper, train), list(lower.values()))
    n_inner = sum(v.numel() for v in lower.values())
    return BilevelProblem(inner_loss, outer_loss, {k: v.detach() for k, v in lower.items()}, upper, train, val,
                          inner_lr=0.1, name="autolora",
                          description=f"AutoLoRA search: gated LoRA k=4 on query/value of a 2-layer hidden-16 BERT "
                                      f"(float64), batch {batch_size} x {seq_len}, {n_inner} inner / "
                                      f"{sum(v.numel() for v in upper.values())} outer, weight decay "
                                      f"{weight_decay}, inner solved by L-BFGS")
