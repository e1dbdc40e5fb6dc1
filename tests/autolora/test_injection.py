import pytest
import torch

from autolora.config import AutoLoraConfig
from autolora.injection import (default_target_modules, find_target_modules, gated_layers, head_module_names,
                                inject_gated_lora, lower_parameters, upper_parameters)
from autolora.layers import GatedLoraLinear
from tiny_models import tiny_batch, tiny_model

EXPECTED = {
    "bert": (["query", "value"], ["classifier"]),
    "roberta": (["query", "value"], ["classifier"]),
    "deberta-v2": (["query_proj", "value_proj"], ["pooler", "classifier"]),
    "gpt2": (["c_attn"], ["score"]),
    "llama": (["q_proj", "v_proj"], ["score"]),
}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_defaults_per_architecture(arch):
    model = tiny_model(arch)
    targets, heads = EXPECTED[arch]
    assert default_target_modules(model) == targets
    assert head_module_names(model) == heads
    names = inject_gated_lora(model, AutoLoraConfig(k=4))
    assert len(names) == 2 * len(targets)  # two layers
    assert all(any(n.endswith("." + t) for t in targets) for n in names)
    assert list(gated_layers(model)) == names
    lower, upper = lower_parameters(model), upper_parameters(model)
    assert set(upper) == {f"{n}.lora_logits" for n in names}
    assert {n for n in lower if "lora_" in n} == {f"{n}.lora_{m}" for n in names for m in "AB"}
    assert any(n.startswith(heads[-1] + ".") for n in lower)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lower) | set(upper)
    # The injected model still starts as the base model (B = 0) and runs.
    out = model(**tiny_batch())
    assert torch.isfinite(out.loss)


def test_gpt2_conv1d_is_wrapped_and_lm_head_is_not_a_head():
    model = tiny_model("gpt2", kind="generation")
    assert head_module_names(model) == []
    inject_gated_lora(model, AutoLoraConfig(k=2))
    layer = gated_layers(model)["transformer.h.0.attn.c_attn"]
    assert (layer.in_features, layer.out_features) == (16, 48)
    assert all(not n.startswith("lm_head") for n in lower_parameters(model))


@pytest.mark.parametrize("targets,expected", [
    (["query"], 2),                                             # dotted suffix
    (["bert.encoder.layer.0.attention.self.query"], 1),         # exact name
    ([r"bert\.encoder\.layer\.1\.attention\.self\.(query|key)"], 2),  # full-match regex
])
def test_matching_rules(targets, expected):
    assert len(find_target_modules(tiny_model("bert"), targets)) == expected


def test_target_matching_nothing_lists_existing_modules():
    with pytest.raises(ValueError) as info:
        inject_gated_lora(tiny_model("bert"), AutoLoraConfig(target_modules=["q_proj"]))
    message = str(info.value)
    assert "'q_proj'" in message and "\n" not in message
    assert "bert.encoder.layer.*.attention.self.query" in message and "--target-modules" in message


def test_double_injection_is_refused():
    model = tiny_model("bert")
    inject_gated_lora(model, AutoLoraConfig(k=2))
    assert all(isinstance(m, GatedLoraLinear) for m in gated_layers(model).values())
    with pytest.raises(ValueError, match="only once"):
        inject_gated_lora(model, AutoLoraConfig(k=2))
