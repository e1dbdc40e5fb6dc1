"""Second derivatives through attention: a tiny BERT (SDPA attention) inside a Problem with methods that
differentiate twice; the fused CPU kernel's missing double backward; rejection of flash attention before step 1."""
import pytest
import torch
import torch.nn.functional as F

import bilevel
from bilevel.attention_kernels import explain_double_backward_error, second_order_kernels

transformers = pytest.importorskip("transformers")
DT = torch.float64
BATCH, LENGTH, VOCAB = 6, 8, 50


def tiny_bert(attn_implementation="sdpa", seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, num_labels=2,
                                     attn_implementation=attn_implementation)
    return transformers.BertForSequenceClassification(config).to(DT).train()


def batch(seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, VOCAB, (BATCH, LENGTH), generator=gen), torch.randint(0, 2, (BATCH,), generator=gen))


ATTENTION = ["bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0.attention.self.key.weight",
             "classifier.weight", "classifier.bias"]


class WeightedTraining(bilevel.Level):
    """Per-example weights sigmoid(a_i) on the training loss (data reweighting)."""

    def loss(self, batch):
        ids, labels = batch
        per_example = F.cross_entropy(self(input_ids=ids).logits, labels, reduction="none")
        return (torch.sigmoid(self.outer.params["a"]) * per_example).mean()


class Validation(bilevel.Level):
    def loss(self, batch):
        ids, labels = batch
        return F.cross_entropy(self.inner(input_ids=ids).logits, labels)


def bert_engine(model, method):
    lower = WeightedTraining(module=model, params=ATTENTION, optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
                             data=[batch(0)])
    upper = Validation(params={"a": torch.nn.Parameter(torch.zeros(BATCH, dtype=DT))},
                       optimizer=lambda p: torch.optim.SGD(p, lr=1.0), data=[batch(1)])
    return bilevel.Engine(lower, upper, method=method, config=bilevel.EngineConfig(outer_steps=2, progress=False))


def test_fused_cpu_attention_has_no_double_backward():
    """Why the library switches kernels: differentiating an SDPA gradient fails on the default CPU kernel."""
    model = tiny_bert()
    ids, labels = batch(0)
    query = model.bert.encoder.layer[0].attention.self.query.weight
    gradient, = torch.autograd.grad(F.cross_entropy(model(input_ids=ids).logits, labels), query, create_graph=True)
    try:
        torch.autograd.grad((gradient ** 2).sum(), query)
    except RuntimeError as error:
        assert "derivative for" in str(error) and "not implemented" in str(error)
        explained = explain_double_backward_error(error, "cg")
        assert isinstance(explained, bilevel.SecondDerivativeError)
        assert "attn_implementation='eager'" in str(explained) and "finite_difference" in str(explained)
    else:
        pytest.skip("this torch version differentiates its fused CPU attention twice")
    with second_order_kernels():  # the same computation on the math backend works
        gradient, = torch.autograd.grad(F.cross_entropy(model(input_ids=ids).logits, labels), query,
                                        create_graph=True)
        assert torch.isfinite(torch.autograd.grad((gradient ** 2).sum(), query)[0]).all()


def test_second_order_kernels_select_the_math_backend_only_inside():
    from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends

    before = set(_cur_sdpa_kernel_backends())
    with second_order_kernels():
        assert set(_cur_sdpa_kernel_backends()) == {SDPBackend.MATH}
    assert set(_cur_sdpa_kernel_backends()) == before


def test_other_errors_pass_through_unchanged():
    error = RuntimeError("shape mismatch")
    assert explain_double_backward_error(error, "cg") is error


@pytest.mark.filterwarnings("ignore:ConjugateGradient.*non-positive curvature")  # untrained inner level
@pytest.mark.parametrize("method", [bilevel.methods.ConjugateGradient(iterations=5),
                                    bilevel.methods.Unroll(steps=2, lr=0.05)], ids=["cg", "unroll"])
def test_second_order_methods_run_on_sdpa_bert(method):
    model = tiny_bert()
    engine = bert_engine(model, method)
    engine.run()
    assert engine.step == 2
    grads = engine.last_result.grads["a"]
    assert torch.isfinite(grads).all() and grads.abs().max() > 0


def test_one_step_unroll_through_attention_matches_finite_difference():
    """The double backward through SDPA (math kernel) agrees with DARTS' finite difference, which needs none."""
    model = tiny_bert()
    engine = bert_engine(model, "unroll")
    inner, outer = engine.inner.stored_params, engine.outer.stored_params
    results = {}
    for method in (bilevel.methods.Unroll(steps=1, lr=0.05), bilevel.methods.FiniteDifference(lr=0.05, epsilon=1e-4)):
        results[method.name] = bilevel.hypergradient(engine.inner_loss, engine.outer_loss, inner, outer, batch(0),
                                                     batch(1), method)["a"]
    error = (results["unroll"] - results["finite_difference"]).norm() / results["unroll"].norm()
    assert error < 1e-9


def test_flash_attention_is_rejected_before_step_one():
    model = tiny_bert()
    model.config._attn_implementation = "flash_attention_2"
    engine = bert_engine(model, "cg")
    before = {k: v.detach().clone() for k, v in engine.inner.stored_params.items()}
    with pytest.raises(bilevel.SecondDerivativeError,
                       match=r"method 'cg' needs second derivatives.*flash_attention_2.*attn_implementation='eager'"
                             r".*method='finite_difference'"):
        engine.run()
    assert engine.step == 0
    assert all(torch.equal(v, before[k]) for k, v in engine.inner.stored_params.items())
