from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

import bilevel
from autolora.config import AutoLoraConfig, SearchConfig
from autolora.injection import gated_layers, inject_gated_lora, lower_parameters, upper_parameters
from autolora.search import GateSelection, LoraTraining, build_method, search_ranks, split_train
from tiny_models import tiny_batch, tiny_model

D = 6


class TwoPaths(nn.Module):
    """Regression y = useful(x) + useless(z): only the `useful` matrix can explain y; z carries nothing (zeros)."""

    def __init__(self, w0):
        super().__init__()
        self.useful = nn.Linear(D, D, bias=False)
        self.useless = nn.Linear(D, D, bias=False)
        with torch.no_grad():
            self.useful.weight.copy_(w0)
            self.useless.weight.zero_()

    def forward(self, x, z, labels):
        prediction = self.useful(x) + self.useless(z)
        return SimpleNamespace(loss=((prediction - labels) ** 2).mean())


def two_paths_problem(n=256, seed=0):
    """The model, with gated layers whose component 0 of `useful` is exactly the missing update D and
    component 1 a random (harmful) matrix; and data y = x (W0 + D)^T."""
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(D, D, generator=g) / D ** 0.5
    u, v = torch.randn(D, generator=g), torch.randn(D, generator=g)
    missing = torch.outer(u, v) / D
    x, z = torch.randn(n, D, generator=g), torch.zeros(n, D)
    rows = [{"x": x[i], "z": z[i], "labels": x[i] @ (w0 + missing).t()} for i in range(n)]
    model = TwoPaths(w0)
    config = AutoLoraConfig(k=2, lora_alpha=2.0, lora_dropout=0.0, target_modules=["useful", "useless"],
                            modules_to_save=[])
    inject_gated_lora(model, config)
    layer = model.useful
    with torch.no_grad():  # scaling = lora_alpha / k = 1: component 0 at full gate = the missing update
        layer.lora_A[0] = v / v.norm()
        layer.lora_B[:, 0] = u * v.norm() / D
        layer.lora_A[1] = torch.randn(D, generator=g)
        layer.lora_B[:, 1] = torch.randn(D, generator=g) * missing.norm() / D
    return model, config, rows


@pytest.mark.parametrize("method", ["finite_difference", "identity_implicit"])
def test_search_selects_the_useful_component(method):
    model, config, rows = two_paths_problem()
    before = {n: p.detach().clone() for n, p in lower_parameters(model).items()}
    result = search_ranks(model, rows, default_collate, config,
                    SearchConfig(method=method, max_steps=40, batch_size=32, learning_rate=1e-6,
                                 alpha_learning_rate=0.05, record_every=10, seed=0), progress=False)
    useful = result.ranks.weights["useful"]
    assert useful[0] > 0.6 > 0.4 > useful[1]
    assert result.ranks.ranks["useful"] == 1 and result.ranks.kept["useful"] == [0]
    # `useless` has no effect on the loss, so its gates get an exactly zero hypergradient and stay uniform.
    assert result.ranks.weights["useless"] == pytest.approx([0.5, 0.5], abs=1e-6)
    # The trajectory shows the useful weight rising monotonically from 1/2.
    series = [w[0] for w in result.trajectory.weights["useful"]]
    assert result.trajectory.steps == [0, 10, 20, 30, 40]
    assert series[0] == pytest.approx(0.5) and all(b > a for a, b in zip(series, series[1:]))
    # The LoRA weights barely moved (tiny lower lr): the selection came from the gates.
    for name, value in lower_parameters(model).items():
        torch.testing.assert_close(value, before[name], atol=1e-4, rtol=0)


def test_lower_step_leaves_logits_and_upper_step_leaves_lora_weights():
    model = tiny_model("bert")
    inject_gated_lora(model, AutoLoraConfig(k=4))
    model.train()
    lower_params, upper_params = lower_parameters(model), upper_parameters(model)
    batch = tiny_batch()
    lower = LoraTraining(module=model, params=lower_params, data=[batch],
                         optimizer=torch.optim.Adam(list(lower_params.values()), lr=1e-2))
    upper = GateSelection(module=model, params=upper_params, data=[tiny_batch(seed=2)],
                          optimizer=torch.optim.Adam(list(upper_params.values()), lr=1e-2))
    engine = bilevel.Engine(lower, upper, method=build_method(SearchConfig(learning_rate=1e-2)),
                            config=bilevel.EngineConfig(progress=False))
    snapshot = lambda params: {n: p.detach().clone() for n, p in params.items()}  # noqa: E731
    logits0, lora0 = snapshot(upper_params), snapshot(lower_params)
    engine.inner_step()
    assert all(p.grad is None for p in upper_params.values())  # the lower backward never reaches the logits
    assert all(torch.equal(p, logits0[n]) for n, p in upper_params.items())
    assert any(not torch.equal(p, lora0[n]) for n, p in lower_params.items())
    lora1 = snapshot(lower_params)
    engine.outer_step()
    assert all(torch.equal(p, lora1[n]) for n, p in lower_params.items())
    assert all(not torch.equal(p, logits0[n]) for n, p in upper_params.items())


def _engine_method(config: SearchConfig) -> bilevel.HypergradientMethod:
    """The method an Engine with the search's LoRA optimizer (Adam at config.learning_rate) runs."""
    model = tiny_model("bert")
    inject_gated_lora(model, AutoLoraConfig(k=2))
    lower_params, upper_params = lower_parameters(model), upper_parameters(model)
    lower = LoraTraining(module=model, params=lower_params, data=[tiny_batch()],
                         optimizer=torch.optim.Adam(list(lower_params.values()), lr=config.learning_rate,
                                                    weight_decay=config.weight_decay))
    upper = GateSelection(module=model, params=upper_params, data=[tiny_batch(seed=2)],
                          optimizer=torch.optim.Adam(list(upper_params.values()), lr=1e-2))
    return bilevel.Engine(lower, upper, method=build_method(config)).method


def test_method_gets_the_lora_learning_rate():
    method = _engine_method(SearchConfig(learning_rate=1e-3))
    assert method.name == "finite_difference" and method.lr == 1e-3
    assert _engine_method(SearchConfig(method="finite_difference", method_kwargs={"lr": 0.5})).lr == 0.5
    assert _engine_method(SearchConfig(method="identity_implicit")).name == "identity_implicit"
    unroll = _engine_method(SearchConfig(method="unroll", learning_rate=2e-3, weight_decay=0.1))
    assert (unroll.lr, unroll.optimizer, unroll.optimizer_settings["weight_decay"]) == (2e-3, "adam", 0.1)
    with pytest.raises(ValueError, match="registered methods"):
        build_method(SearchConfig(method="nope"))


def test_split_is_seeded_and_disjoint():
    rows = list(range(100))
    lower, upper = split_train(rows, 0.3, seed=1)
    assert len(upper) == 30 and sorted(lower + upper) == rows
    assert split_train(rows, 0.3, seed=1) == (lower, upper)
    with pytest.raises(ValueError, match="cannot be split"):
        split_train([1], 0.3, seed=0)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_search_on_a_tiny_transformer_keeps_the_model_in_place(arch):
    model = tiny_model(arch)
    base = {n: p for n, p in model.named_parameters()}
    rows = [{k: v[0] for k, v in tiny_batch(batch_size=1, seed=s).items()} for s in range(20)]
    result = search_ranks(model, rows, default_collate, AutoLoraConfig(k=4),
                    SearchConfig(max_steps=6, batch_size=4, record_every=3, alpha_learning_rate=0.1),
                    progress=False)
    assert set(result.ranks.ranks) == set(gated_layers(model)) and result.steps == 6
    assert all(1 <= r <= 4 for r in result.ranks.ranks.values())
    assert result.trajectory.steps == [0, 3, 6] and len(result.losses["outer_loss"]) == 2
    # The base weights are the very same tensors (wrapped, never copied).
    after = dict(model.named_parameters())
    for name, p in base.items():
        wrapped = [a for n, a in after.items() if a is p]
        assert wrapped, f"{name} was copied"
    assert any(w != [0.25] * 4 for w in result.ranks.weights.values())
    assert result.trainable_parameters["outer"] == 4 * len(result.ranks.ranks)


# Dense-Hessian methods ("exact", "dense") take about a minute even here: they run with --runslow.
FAST_METHODS = ["first_order", "finite_difference", "identity_implicit", "unroll", "neumann", "cg"]
SLOW_METHODS = sorted(set(bilevel.methods.names()) - set(FAST_METHODS) - {"darts", "fo", "conjugate_gradient"})


@pytest.mark.filterwarnings("ignore:ConjugateGradient")
@pytest.mark.parametrize("method", FAST_METHODS + [pytest.param(m, marks=pytest.mark.slow) for m in SLOW_METHODS])
def test_every_registered_method_runs_the_search(method):
    model = tiny_model("bert")
    rows = [{k: v[0] for k, v in tiny_batch(batch_size=1, seed=s).items()} for s in range(12)]
    result = search_ranks(model, rows, default_collate, AutoLoraConfig(k=2, lora_dropout=0.0),
                    SearchConfig(method=method, max_steps=2, batch_size=4, alpha_learning_rate=0.1), progress=False)
    assert result.method and all(1 <= r <= 2 for r in result.ranks.ranks.values())


def test_search_on_a_causal_language_model():
    model = tiny_model("llama", kind="generation")
    rows = []
    for s in range(12):
        ids = tiny_batch(batch_size=1, seed=s)["input_ids"][0]
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    result = search_ranks(model, rows, default_collate, AutoLoraConfig(k=2),
                    SearchConfig(max_steps=2, batch_size=4), progress=False)
    assert len(result.ranks.ranks) == 4 and result.trainable_parameters["inner"] == 2 * 2 * (2 * 16 + 16 * 2)


def test_ablation_without_meta_learning_trains_the_logits_on_the_training_loss():
    """selection_split="train": the first logit step is Adam's first step on the plain gradient of the loss on the
    whole training set (full batch here), not a hypergradient on a held-out split."""
    model, config, rows = two_paths_problem(n=64)
    reference, _, _ = two_paths_problem(n=64)
    logits = upper_parameters(reference)
    batch = default_collate(rows)
    loss = reference(**batch).loss
    grads = torch.autograd.grad(loss, list(logits.values()))
    lr = 0.05
    result = search_ranks(model, rows, default_collate, config,
                    SearchConfig(selection_split="train", max_steps=1, batch_size=64, learning_rate=1e-3,
                                 alpha_learning_rate=lr, record_every=1), progress=False)
    assert result.method == "joint (no meta learning)"
    assert result.losses["outer_loss"][0][1] == pytest.approx(float(loss.detach()), rel=1e-6)  # the whole training set
    assert grads[0].abs().min() > 1e-6, "the loss must depend on the useful logits, or the test proves nothing"
    for (name, after), g in zip(upper_parameters(model).items(), grads):
        expected = -lr * g / (g.abs() + 1e-8)   # Adam's first step from zero logits
        torch.testing.assert_close(after.detach(), expected, atol=1e-5, rtol=1e-4, msg=name)


def test_selection_split_is_checked():
    with pytest.raises(ValueError, match="selection_split"):
        SearchConfig(selection_split="test")
