import json

import pytest
import torch
from peft import LoraConfig, PeftModel

from autolora.config import AutoLoraConfig
from autolora.export import build_peft_model, load_peft_config, peft_config_dict, save_peft_config
from autolora.injection import head_module_names
from autolora.ranks import RankResult
from tiny_models import tiny_batch, tiny_model

ARCH_NAMES = {
    "bert": ["bert.encoder.layer.{}.attention.self.query", "bert.encoder.layer.{}.attention.self.value"],
    "gpt2": ["transformer.h.{}.attn.c_attn"],
    "llama": ["model.layers.{}.self_attn.q_proj", "model.layers.{}.self_attn.v_proj"],
}


def ranks_for(arch, k=4):
    names = [n.format(i) for i in range(2) for n in ARCH_NAMES[arch]]
    ranks = {n: r for n, r in zip(names, [3, 1, 0, 2])}
    return RankResult(ranks=ranks, k=k, threshold=1 / k, allow_zero_rank=True)


def peft_ranks(model):
    return {name.removeprefix("base_model.model."): m.r["default"] for name, m in model.named_modules()
            if hasattr(m, "r") and isinstance(m.r, dict) and "default" in m.r}


@pytest.mark.parametrize("scaling", ["peft", "search"])
@pytest.mark.parametrize("arch", sorted(ARCH_NAMES))
def test_export_loads_into_peft_with_the_learned_ranks(tmp_path, arch, scaling):
    ranks = ranks_for(arch)
    cfg = AutoLoraConfig(k=4, lora_alpha=8, rank_scaling=scaling)
    model = tiny_model(arch)
    exported = peft_config_dict(ranks, cfg, modules_to_save=head_module_names(model), task_kind="classification",
                                fan_in_fan_out=arch == "gpt2")
    save_peft_config(exported, tmp_path / "peft_config.json")
    assert isinstance(load_peft_config(tmp_path / "peft_config.json"), LoraConfig)
    assert LoraConfig(**json.loads((tmp_path / "peft_config.json").read_text())).r == exported["r"]
    peft_model = build_peft_model(model, exported)
    expected = {n: r for n, r in ranks.ranks.items() if r > 0}
    assert peft_ranks(peft_model) == expected
    for name, layer in peft_model.named_modules():
        if name.removeprefix("base_model.model.") in expected:
            r = expected[name.removeprefix("base_model.model.")]
            want = 8 / r if scaling == "peft" else 8 / 4
            assert layer.scaling["default"] == pytest.approx(want)


def test_adapter_round_trip_and_merge(tmp_path):
    arch = "bert"
    exported = peft_config_dict(ranks_for(arch), AutoLoraConfig(k=4, lora_alpha=8),
                                modules_to_save=["classifier"], task_kind="classification")
    peft_model = build_peft_model(tiny_model(arch), exported)
    with torch.no_grad():  # make the adapter non-trivial
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.1)
    peft_model.eval()
    batch = tiny_batch()
    expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(tiny_model(arch), tmp_path / "adapter").eval()
    torch.testing.assert_close(loaded(**batch).logits, expected)
    merged = loaded.merge_and_unload()
    torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-5, rtol=1e-4)


def test_all_zero_ranks_is_an_error():
    ranks = RankResult(ranks={"a": 0}, k=2, threshold=0.5, allow_zero_rank=True)
    with pytest.raises(ValueError, match="nothing to retrain"):
        peft_config_dict(ranks, AutoLoraConfig(k=2))


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_exported_peft_model_equals_our_gated_model_with_the_kept_components(arch):
    """With rank_scaling="search" and the kept components copied over, PEFT computes what our layers compute."""
    from autolora.injection import gated_layers, inject_gated_lora
    from autolora.ranks import compute_ranks

    cfg = AutoLoraConfig(k=4, lora_alpha=8, lora_dropout=0.0, rank_scaling="search")
    ours = tiny_model(arch)
    inject_gated_lora(ours, cfg)
    torch.manual_seed(1)
    for layer in gated_layers(ours).values():
        with torch.no_grad():
            layer.lora_B.normal_()
            layer.lora_logits.normal_(std=2.0)
    ranks = compute_ranks(ours, threshold=0.25)
    for name, layer in gated_layers(ours).items():  # keep exactly the thresholded components, at full gate
        gates = torch.zeros(4)
        gates[ranks.kept[name]] = 1.0
        layer.fixed_gates = gates
    exported = peft_config_dict(ranks, cfg, modules_to_save=head_module_names(tiny_model(arch)),
                                fan_in_fan_out=arch == "gpt2")
    theirs = build_peft_model(tiny_model(arch), exported).eval()
    modules = dict(theirs.base_model.model.named_modules())
    with torch.no_grad():
        for name, layer in gated_layers(ours).items():
            kept = ranks.kept[name]
            modules[name].lora_A["default"].weight.copy_(layer.lora_A[kept])
            modules[name].lora_B["default"].weight.copy_(layer.lora_B[:, kept])
    batch = tiny_batch()
    torch.testing.assert_close(theirs(**batch).logits, ours(**batch).logits, atol=1e-5, rtol=1e-4)
