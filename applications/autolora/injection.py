"""Put `GatedLoraLinear` layers into a model in place, and name the parameters of the two levels.

Target matching follows PEFT: an entry of ``target_modules`` matches a module whose full name equals it,
ends with ``"." + entry``, or full-matches it as a regular expression. Only ``nn.Linear`` and GPT-2's
``Conv1D`` are adapted. Nothing is copied: the base weights stay where they are and are frozen.

    names = inject_gated_lora(model, AutoLoraConfig(k=8))
    lower = lower_parameters(model)    # LoRA A/B of every gated layer + the task head
    upper = upper_parameters(model)    # the selection logits
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from .config import AutoLoraConfig
from .layers import GatedLoraLinear, is_adaptable

__all__ = [
    "ALL_LINEAR", "DEFAULT_TARGET_MODULES", "default_target_modules", "find_target_modules", "head_module_names",
    "inject_gated_lora", "heads_of", "target_module_names", "gated_layers", "lower_parameters", "upper_parameters", "adaptable_module_names",
]

# model_type -> default targets (the attention query and value projections, as in LoRA and AutoLoRA).
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "value"], "roberta": ["query", "value"], "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"], "camembert": ["query", "value"], "mpnet": ["q", "v"],
    "deberta": ["in_proj"], "deberta-v2": ["query_proj", "value_proj"], "distilbert": ["q_lin", "v_lin"],
    "gpt2": ["c_attn"], "gpt_neox": ["query_key_value"], "bloom": ["query_key_value"],
    "falcon": ["query_key_value"], "opt": ["q_proj", "v_proj"], "t5": ["q", "v"],
    "llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"], "mixtral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"], "qwen3": ["q_proj", "v_proj"], "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"], "phi": ["q_proj", "v_proj"], "phi3": ["qkv_proj"],
}
# Fallbacks for unknown architectures, tried in order.
_FALLBACK_TARGETS = (["query", "value"], ["q_proj", "v_proj"], ["query_proj", "value_proj"], ["c_attn"])


ALL_LINEAR = "all-linear"  # PEFT's convention: every linear layer but the output layer and the head


def _output_layer_names(model: nn.Module) -> list[str]:
    """The language-model output layer (tied to the embeddings; PEFT's all-linear leaves it out)."""
    get = getattr(model, "get_output_embeddings", None)
    output = get() if callable(get) else None
    return [name for name, m in model.named_modules() if output is not None and m is output]


def adaptable_module_names(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` / ``Conv1D`` modules of ``model`` (gated layers count by their own name)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, GatedLoraLinear):
            names.append(name)
        elif is_adaptable(module) and not name.endswith(".base_layer"):
            names.append(name)
    return names


def _matches(entry: str, name: str) -> bool:
    if name == entry or name.endswith("." + entry):
        return True
    try:
        return re.fullmatch(entry, name) is not None
    except re.error:
        return False


def _summarise(names: Iterable[str], limit: int = 12) -> str:
    """Names with layer indices folded to '*' and the list cut at ``limit`` entries."""
    folded = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", n) for n in names))
    shown = ", ".join(folded[:limit])
    return shown + (f", ... ({len(folded) - limit} more)" if len(folded) > limit else "")


def default_target_modules(model: nn.Module) -> list[str]:
    """The default targets for ``model``'s architecture (``config.model_type``), else the first known pattern
    that matches; raises if none does, asking for ``--target-modules``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in DEFAULT_TARGET_MODULES:
        return list(DEFAULT_TARGET_MODULES[model_type])
    names = adaptable_module_names(model)
    for candidate in _FALLBACK_TARGETS:
        if all(any(_matches(entry, n) for n in names) for entry in candidate):
            return list(candidate)
    raise ValueError(f"default_target_modules: no default targets for model_type {model_type!r}; pass "
                     f"--target-modules with some of: {_summarise(names)}")


def head_module_names(model: nn.Module) -> list[str]:
    """The task head: top-level children outside the pretrained backbone that hold parameters, except the
    language-model output layer (tied to the embeddings). E.g. ``classifier`` (BERT), ``score`` (GPT-2)."""
    prefix = getattr(model, "base_model_prefix", None)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    heads = []
    for name, child in model.named_children():
        if name == prefix or child is output or name == "lm_head":
            continue
        if any(True for _ in child.parameters()):
            heads.append(name)
    return heads


def find_target_modules(model: nn.Module, target_modules: list[str] | None,
                        exclude: Iterable[str] = ()) -> list[str]:
    """Full names of the adaptable modules matched by ``target_modules`` (None = architecture default),
    skipping modules under ``exclude`` (the head). Each entry must match at least one module.

    ``["all-linear"]`` (PEFT's convention) takes every ``nn.Linear``/``Conv1D`` except the head and the
    language-model output layer: attention projections, feed-forward layers and, in BERT, the pooler.
    """
    targets = target_modules if target_modules is not None else default_target_modules(model)
    names = adaptable_module_names(model)
    excluded = tuple(exclude)
    if ALL_LINEAR in targets:
        if len(targets) != 1:
            raise ValueError(f"--target-modules {ALL_LINEAR} stands alone; got {targets}")
        excluded += tuple(_output_layer_names(model))
        return [n for n in names if not any(n == e or n.startswith(e + ".") for e in excluded)]
    candidates = [n for n in names if not any(n == e or n.startswith(e + ".") for e in excluded)]
    for entry in targets:
        if not any(_matches(entry, n) for n in candidates):
            raise ValueError(f"target module {entry!r} matches no nn.Linear/Conv1D module; change "
                             f"--target-modules to some of: {_summarise(candidates)}")
    return [n for n in candidates if any(_matches(entry, n) for entry in targets)]


def heads_of(model: nn.Module, config: AutoLoraConfig) -> list[str]:
    """The modules trained fully beside the LoRA weights: ``config.modules_to_save`` or the detected head."""
    return config.modules_to_save if config.modules_to_save is not None else head_module_names(model)


def target_module_names(model: nn.Module, config: AutoLoraConfig) -> list[str]:
    """The matrices ``config`` adapts in ``model`` (its head excluded), in model order."""
    return find_target_modules(model, config.target_modules, exclude=heads_of(model, config))


def inject_gated_lora(model: nn.Module, config: AutoLoraConfig) -> list[str]:
    """Replace each target module of ``model`` by a `GatedLoraLinear` wrapping it, in place.

    Freezes every base parameter, then unfreezes the head (``config.modules_to_save`` or the detected head).
    Returns the adapted module names.
    """
    heads = heads_of(model, config)
    targets = find_target_modules(model, config.target_modules, exclude=heads)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child_name)
        if isinstance(base, GatedLoraLinear):
            raise ValueError(f"inject_gated_lora: {name!r} already holds a GatedLoraLinear; inject only once")
        setattr(parent, child_name, GatedLoraLinear(base, config.k, config.lora_alpha, config.lora_dropout))
    for head in heads:
        try:
            module = model.get_submodule(head)
        except AttributeError:
            raise ValueError(f"inject_gated_lora: modules_to_save entry {head!r} is not a module of the model; "
                             f"top-level modules: {[n for n, _ in model.named_children()]}") from None
        for p in module.parameters():
            p.requires_grad_(True)
    model._autolora_heads = list(heads)  # read back by lower_parameters
    return targets


def gated_layers(model: nn.Module) -> dict[str, GatedLoraLinear]:
    """Module name -> `GatedLoraLinear`, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, GatedLoraLinear)}


def lower_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The inner-level parameters (the paper's lower level) by ``named_parameters()`` name: every LoRA A/B and the
    head's parameters."""
    heads = tuple(getattr(model, "_autolora_heads", ()))
    params = {}
    for name, p in model.named_parameters():
        is_lora = name.endswith(".lora_A") or name.endswith(".lora_B")
        in_head = any(name.startswith(h + ".") for h in heads)
        if is_lora or in_head:
            params[name] = p
    return params


def upper_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The outer-level parameters (the paper's upper level) by ``named_parameters()`` name: the selection logits of
    every gated layer."""
    return {name: p for name, p in model.named_parameters() if name.endswith(".lora_logits")}
