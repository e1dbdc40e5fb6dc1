import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from autolora.layers import GatedLoraLinear


class Holder(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.proj = layer

    def forward(self, x):
        return self.proj(x)


def make_base(kind):
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Linear(8, 6).double()
    layer = Conv1D(6, 8).double()  # nf=6 outputs, nx=8 inputs; weight stored (8, 6)
    nn.init.normal_(layer.weight)
    return layer


def peft_equivalent(base, gated, gates, r, peft_alpha):
    """PEFT LoRA of rank r on a copy of ``base`` whose A/B are the components selected by ``gates``."""
    import copy

    model = get_peft_model(Holder(copy.deepcopy(base)),
                           LoraConfig(r=r, lora_alpha=peft_alpha, target_modules=["proj"],
                                      fan_in_fan_out=isinstance(base, Conv1D)))
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(gated.lora_A[:r])
        layer.lora_B["default"].weight.copy_(gated.lora_B[:, :r])
    return model.eval()


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_starts_equal_to_base(kind):
    base = make_base(kind)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    expected = base(x)
    gated = GatedLoraLinear(base, k=4, lora_alpha=8)
    torch.testing.assert_close(gated(x), expected)
    assert not any(p.requires_grad for p in gated.base_layer.parameters())
    torch.testing.assert_close(gated.gates(), torch.full((4,), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("gate_kind", ["one_hot_prefix", "uniform"])
def test_fixed_gates_equal_peft_lora(kind, gate_kind):
    k, lora_alpha = 4, 8.0
    base = make_base(kind)
    gated = GatedLoraLinear(base, k=k, lora_alpha=lora_alpha)
    with torch.no_grad():
        gated.lora_B.normal_()
    if gate_kind == "one_hot_prefix":  # first r components on: PEFT rank r with the same scaling lora_alpha / k
        r = 3
        gated.fixed_gates = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
        peft_alpha = lora_alpha * r / k
    else:  # uniform 1/k: PEFT rank k with scaling lora_alpha / k**2
        r = k
        gated.fixed_gates = torch.full((k,), 1.0 / k, dtype=torch.float64)
        peft_alpha = lora_alpha / k
    reference = peft_equivalent(base, gated, gated.fixed_gates, r, peft_alpha)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(gated(x), reference(x))
    # The dense update agrees with the forward pass.
    torch.testing.assert_close(gated(x) - base(x), x @ gated.delta_weight().t())


def test_softmax_gates_and_gradients_reach_all_parts():
    gated = GatedLoraLinear(nn.Linear(8, 6), k=4, lora_alpha=8)
    with torch.no_grad():
        gated.lora_B.normal_()
        gated.lora_logits.copy_(torch.tensor([2.0, 0.0, -1.0, 0.5]))
    torch.testing.assert_close(gated.gates().sum(), torch.tensor(1.0))
    gated(torch.randn(3, 8)).pow(2).sum().backward()
    for p in (gated.lora_A, gated.lora_B, gated.lora_logits):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert gated.base_layer.weight.grad is None


def test_rejects_other_layers():
    with pytest.raises(TypeError, match="nn.Linear or transformers Conv1D"):
        GatedLoraLinear(nn.Conv2d(3, 3, 1))
