"""Gradients compiled (``compile_gradients``: torch.compile of torch.func.grad_and_value) give the hand-derived
gradients and the eager numbers, take the eager pass where they cannot be used (a graph through the parameters,
create_graph), and under ``EngineConfig(compile_gradients=True)`` the Engine's runs equal its eager runs."""
import shutil
import warnings

import pytest
import torch

import bilevel
from bilevel.autodiff import MicroBatches, compile_gradients, compiled, loss_gradients
from problems import DT, Ridge, relative_error
from tests.bilevel.stochastic_quadratic import outer_value, quadratic_engine

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="torch.compile's inductor needs a C++ compiler")
PROBLEM = Ridge(per_feature=False)  # two inner tensors (w_head, w_tail), a scalar lambda
X, Y = PROBLEM.inner_batch


def point():
    return PROBLEM.inner_params(PROBLEM.w0), PROBLEM.outer_params(PROBLEM.x0)


@pytest.mark.parametrize("batch", [(X, Y), MicroBatches([(X[:20], Y[:20]), (X[20:], Y[20:])])],
                         ids=["plain", "micro_batches"])
def test_compiled_gradients_are_the_hand_derived_ones(batch):
    compiled._compiled.clear()
    inner, outer = point()
    loss = compile_gradients(PROBLEM.g)
    value, (grad_x, grad_w) = loss_gradients(loss, inner, outer, batch, (outer, inner))
    w, x = PROBLEM.flat(inner), PROBLEM.flat(outer)
    assert relative_error(PROBLEM.flat(grad_w), PROBLEM.inner_grad(w, x, (X, Y))) <= 1e-12
    assert relative_error(PROBLEM.flat(grad_x), PROBLEM.inner_grad_x(w, x, (X, Y))) <= 1e-12
    assert abs(float(value - PROBLEM.inner_value(w, x, (X, Y)))) <= 1e-12
    assert [key[1] for key in compiled._compiled] == [("gradient", (1, 0))]  # the compiled path was taken
    _, (only_w,) = loss_gradients(loss, inner, outer, batch, (inner,))
    assert relative_error(PROBLEM.flat(only_w), PROBLEM.flat(grad_w)) <= 1e-12
    assert ("gradient", (0,)) in [key[1] for key in compiled._compiled]


def test_a_graph_through_the_parameters_takes_the_eager_pass():
    """Parameters that are functions of x (an unroll's) give the total derivative in x, which a compiled graph of
    detached inputs could not; create_graph=True keeps the graph. Neither compiles anything."""
    compiled._compiled.clear()
    inner, _ = point()
    outer = {k: v.requires_grad_() for k, v in point()[1].items()}
    through_x = lambda: {k: v * outer["x"] for k, v in inner.items()}  # noqa: E731  w(x) = w0 x, a fresh graph
    loss = compile_gradients(PROBLEM.f)
    _, (total,) = loss_gradients(loss, through_x(), outer, PROBLEM.outer_batch, (outer,))
    _, (eager,) = loss_gradients(PROBLEM.f, through_x(), outer, PROBLEM.outer_batch, (outer,))
    # f depends on x only through w: its partial derivative in x, all a detached graph could give, is zero
    assert torch.equal(total["x"], eager["x"]) and float(total["x"].abs().max()) > 1e-3
    leaves = {k: v.requires_grad_() for k, v in inner.items()}
    _, (graph,) = loss_gradients(loss, leaves, outer, PROBLEM.inner_batch, (leaves,), create_graph=True)
    assert all(g.grad_fn is not None for g in graph.values())
    assert not compiled._compiled
    _, (plain,) = loss_gradients(loss, leaves, outer, PROBLEM.inner_batch, (leaves,))
    assert relative_error(PROBLEM.flat(graph), PROBLEM.flat(plain)) <= 1e-12
    assert [key[1] for key in compiled._compiled] == [("gradient", (0,))]


def test_a_marked_loss_is_the_loss():
    inner, outer = point()
    assert torch.equal(compile_gradients(PROBLEM.g)(inner, outer, (X, Y)), PROBLEM.g(inner, outer, (X, Y)))


@pytest.mark.parametrize("method, config", [
    ("cg", {}),
    (bilevel.MethodSpec("soba", {"compile_products": True}), {"reuse_inner_gradient": True}),
    (bilevel.MethodSpec("amigo", {"compile_products": True}), {"inner_steps": 3}),
    (bilevel.MethodSpec("f2sa", {"steps": 2}), {}),
    ("bome", {}),
    (bilevel.MethodSpec("unroll", {"steps": 2}), {}),
], ids=["cg", "soba", "amigo", "f2sa", "bome", "unroll"])
def test_the_engine_with_compiled_gradients_runs_its_eager_numbers(method, config):
    paths = {}
    for flag in (False, True):
        compiled._compiled.clear()
        engine = quadratic_engine(method, outer_steps=20, noise=0.5, compile_gradients=flag, **config)
        engine.run()
        paths[flag] = outer_value(engine)
        if flag:
            assert any(key[1][0] == "gradient" for key in compiled._compiled)
    assert relative_error(paths[True], paths[False]) <= 1e-12
    assert float(paths[True].norm()) > 0


def test_engine_config_checks_compile_gradients():
    with pytest.raises(ValueError, match=r"^EngineConfig: compile_gradients must be True or False, got 1$"):
        bilevel.EngineConfig(compile_gradients=1)
    with pytest.raises(ValueError, match=r"^EngineConfig: compile_gradients takes no float16 loss scaling; use "
                                         r"autocast_dtype='bfloat16' or None, or compile_gradients=False$"):
        bilevel.EngineConfig(compile_gradients=True, autocast_dtype="float16")


def test_engines_on_different_data_in_one_process_each_get_their_own_numbers():
    """The compiled graph is reused across Engines (it is traced from the loss's code): the data it reads must be
    each problem's own, not the first one's."""
    from problems import Quadratic
    compiled._compiled.clear()
    finals = []
    for seed in (0, 1):
        paths = {}
        for flag in (True, False):
            engine = quadratic_engine("cg", problem=Quadratic(seed=seed, rho=0.5), outer_steps=10,
                                      compile_gradients=flag)
            engine.run()
            paths[flag] = outer_value(engine)
        assert relative_error(paths[True], paths[False]) <= 1e-12
        finals.append(paths[True])
    assert relative_error(finals[0], finals[1]) > 1e-2


class Lower(bilevel.Level):
    """Per-example weights exp(x) on a regression; the module's ``aux`` layer is never used."""

    def loss(self, batch):
        X, y = batch
        return (torch.exp(self.outer.params["x"]) * (self(X).squeeze(-1) - y) ** 2).mean()


class Upper(bilevel.Level):
    def loss(self, batch):
        X, y = batch
        return ((self.inner(X).squeeze(-1) - y) ** 2).mean()


class Net(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.linear, self.aux = torch.nn.Linear(d, 1), torch.nn.Linear(d, 1)

    def forward(self, X):
        return self.linear(X)


def module_engine(compile_gradients, n=16, d=3, **config):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = Net(d).to(DT)
    data = [[(torch.randn(n, d, generator=gen, dtype=DT), torch.randn(n, generator=gen, dtype=DT))] for _ in "tv"]
    lower = Lower(module=net, optimizer=lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1), data=data[0])
    upper = Upper(params={"x": torch.nn.Parameter(torch.zeros(n, dtype=DT))},
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.5), data=data[1])
    config = bilevel.EngineConfig(outer_steps=6, inner_steps=2, progress=False, compile_gradients=compile_gradients,
                                  **config)
    return bilevel.Engine(inner=lower, outer=upper, method="cg", config=config), net


@pytest.mark.parametrize("config", [{}, {"accumulation_steps": 2, "inner_grad_clip": 0.05}],
                         ids=["plain", "micro_batches_and_clipping"])
def test_a_module_level_with_an_unused_layer_runs_its_eager_numbers(config):
    """AdamW's weight decay would move a layer whose gradient were zeros; backward leaves it None, and so must the
    compiled inner step."""
    runs = {}
    for flag in (False, True):
        engine, net = module_engine(flag, **config)
        aux = {k: v.detach().clone() for k, v in net.aux.named_parameters()}
        engine.run()
        runs[flag] = {**{k: v.detach().clone() for k, v in net.named_parameters()},
                      "x": engine.outer.stored_params["x"].detach().clone()}
        assert all(torch.equal(v, getattr(net.aux, k)) for k, v in aux.items())  # never moved
    for key in runs[False]:
        assert relative_error(runs[True][key], runs[False][key]) <= 1e-10, key
    assert float((runs[True]["x"]).abs().max()) > 1e-4


def test_the_cache_keeps_no_engine_alive():
    import gc
    import weakref

    engine, _ = module_engine(True)
    engine.run()
    alive = weakref.ref(engine)
    del engine
    gc.collect()
    assert alive() is None and compiled._compiled


def test_dropout_and_batchnorm_in_training_mode_are_refused():
    from tests.engine.test_engine import shared_engine

    with pytest.raises(ValueError, match=r"^Engine: compile_gradients cannot replay dropout masks \('dropout' of "
                                         r"problem 'SharedLower' is in training mode\); set compile_gradients=False "
                                         r"or put that layer in eval mode$"):
        shared_engine(dropout=0.5, compile_gradients=True)
    with pytest.raises(ValueError, match=r"^Engine: compile_gradients cannot update BatchNorm running statistics "
                                         r"\('norm' of problem"):
        shared_engine(batchnorm=True, compile_gradients=True)
    engine, net, _, _ = shared_engine(batchnorm=True)  # eval mode: nothing to replay or update
    net.eval()
    bilevel.Engine(engine.inner, engine.outer, config=bilevel.EngineConfig(compile_gradients=True, progress=False))


def test_a_users_wrapper_is_part_of_the_loss():
    """functools.wraps on the user's side changes the loss: the compiled graph is the wrapper's, not the function
    under it."""
    import functools

    inner, outer = ({k: v.requires_grad_() for k, v in params.items()} for params in point())

    @functools.wraps(PROBLEM.g)
    def regularized(w, x, batch):
        return PROBLEM.g(w, x, batch) + 10.0 * sum((v ** 2).sum() for v in w.values())

    compiled._compiled.clear()
    fused = loss_gradients(compile_gradients(regularized), inner, outer, (X, Y), (inner,))
    eager = loss_gradients(regularized, inner, outer, (X, Y), (inner,))
    assert abs(float(fused[0] - eager[0])) <= 1e-12 and float(eager[0] - PROBLEM.g(inner, outer, (X, Y))) > 1
    assert relative_error(PROBLEM.flat(fused[1][0]), PROBLEM.flat(eager[1][0])) <= 1e-12
    assert compiled._compiled


def test_more_losses_than_dynamos_recompile_limit_are_each_compiled():
    """Each loss gets a code object of its own: past dynamo's 8 graphs per code object nothing would compile."""
    from torch._dynamo.utils import counters

    inner, outer = ({k: v.requires_grad_() for k, v in params.items()} for params in point())
    before = counters["frames"]["ok"]
    for scale in range(1, 11):
        namespace = {"PROBLEM": PROBLEM}
        exec(f"def loss(w, x, batch):\n    return {scale} * PROBLEM.g(w, x, batch)\n", namespace)
        value, (grads,) = loss_gradients(compile_gradients(namespace["loss"]), inner, outer, (X, Y), (inner,))
        assert abs(float(value - scale * PROBLEM.g(inner, outer, (X, Y)))) <= 1e-12
    assert counters["frames"]["ok"] - before == 10


def test_a_loss_torch_compile_fails_on_runs_eagerly_with_one_warning():
    class Recording:
        def __call__(self, w, x, batch):
            value = PROBLEM.g(w, x, batch)
            self.last = value.detach()  # a side effect torch.func's compiled transforms cannot take
            return value

    inner, outer = ({k: v.requires_grad_() for k, v in params.items()} for params in point())
    loss = compile_gradients(Recording())
    with pytest.warns(RuntimeWarning, match=r"^compile_gradients: torch.compile failed on .*; its gradients are "
                                            r"taken eagerly$"):
        value, (grads,) = loss_gradients(loss, inner, outer, (X, Y), (inner,))
    eager = loss_gradients(PROBLEM.g, inner, outer, (X, Y), (inner,))
    assert float(value) == float(eager[0]) and relative_error(PROBLEM.flat(grads), PROBLEM.flat(eager[1][0])) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_gradients(loss, inner, outer, (X, Y), (inner,))  # eager from now on, without a second warning


def test_engines_of_more_problem_classes_than_dynamos_recompile_limit_are_each_compiled():
    """The Engine's losses are one code for every problem: each problem class gets graphs of its own, where one
    shared code object would run eagerly past dynamo's 8 graphs."""
    from torch._dynamo.utils import counters

    before = counters["frames"]["ok"]
    for scale in range(1, 11):
        lower = type(f"Lower{scale}", (Lower,), {"loss": lambda self, batch, s=scale: s * Lower.loss(self, batch)})
        check_compiled_inner_gradient(lower)
    assert counters["frames"]["ok"] - before == 10


def check_compiled_inner_gradient(lower_class, depth=None):
    """An Engine whose inner level is ``lower_class`` over module_engine's net (its linear layer made ``depth``
    layers deep, if given): the compiled inner loss's gradient gives the eager numbers."""
    template, net = module_engine(True)
    if depth is not None:
        net.linear = torch.nn.Sequential(*[torch.nn.Linear(3, 3).to(DT) for _ in range(depth - 1)],
                                         torch.nn.Linear(3, 1).to(DT))
    engine = bilevel.Engine(inner=lower_class(module=net, optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                                              data=template.inner.data),
                            outer=template.outer, method="cg", config=template.config)
    inner, outer = engine.inner.stored_params, engine.outer.stored_params
    batch = engine.inner.data[0]
    value, (grads,) = loss_gradients(engine._losses[0], inner, outer, batch, (inner,))
    eager_value, (eager,) = loss_gradients(engine.inner_loss, inner, outer, batch, (inner,))
    flat = [torch.cat([g[k].reshape(-1) for k in eager]) for g in (grads, eager)]
    assert abs(float(value - eager_value)) <= 1e-12 and float(eager_value) > 0 and relative_error(*flat) <= 1e-12


def test_two_engines_of_one_problem_share_one_graph():
    from torch._dynamo.utils import counters

    compiled._compiled.clear()
    before = counters["frames"]["ok"]
    for _ in range(2):
        engine, _ = module_engine(True)
        inner, outer = engine.inner.stored_params, engine.outer.stored_params
        loss_gradients(engine._losses[0], inner, outer, engine.inner.data[0], (inner,))
    assert counters["frames"]["ok"] - before == 1


def test_variants_past_the_recompile_limit_warn_once_and_run_eagerly():
    """Engines of one problem class over modules that trace differently: torch.compile keeps recompile_limit
    graphs of one code, and the variants past it take the eager pass (with their own numbers) after one warning."""
    import torch._dynamo

    compiled._compiled.clear()
    compiled._past_limit.clear()
    with torch._dynamo.config.patch(recompile_limit=2), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for depth in range(1, 5):
            check_compiled_inner_gradient(Lower, depth)
    limit = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(limit) == 1, [str(w.message) for w in limit]
    assert str(limit[0].message).startswith("compile_gradients: ") and "traced more than torch.compile's 2 " \
        "variants" in str(limit[0].message) and str(limit[0].message).endswith("its gradients for new variants "
                                                                              "are taken eagerly")
