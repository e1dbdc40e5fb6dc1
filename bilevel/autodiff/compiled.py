"""First and second derivatives compiled by ``torch.compile``: ``torch.func`` transforms of a loss, one graph per
loss and kind (the gradient and the loss, for :func:`compile_gradients`' losses in every first-derivative pass;
``H v`` alone, for AmIGO's linear system; ``H v``, the mixed product, the gradient and the loss at once, for SOBA's
step).

An eager pass pays for every elementwise operation of the loss's forward and backward (and of its double backward,
for a product) as a separate pass through memory; compiled, they are one fused program. On the 100,100-parameter data
cleaning problem of docs/stochastic.md one product took 0.94 ms compiled, 2.28 ms eager and 1.26 ms in jitted JAX,
and in a slower hour of the same machine one gradient 1.16 ms compiled, 1.78 ms eager and 1.68 ms in JAX
(``python -m bench.stochastic_peers.primitives``). The graphs are forward computations (no autograd through them),
so torch 2.13's missing double backward in aot_autograd does not arise.

What it asks of the loss: a pure function of its tensors, which torch.compile can trace (the Engine's losses over
functional or ``functional_call`` levels are); no randomness, since the random state the eager passes replay (the
same dropout masks for every pass) is not replayed inside a compiled graph. The first call of a kind compiles it
(seconds); later ones reuse the graph while the shapes stay.
"""
from __future__ import annotations

import contextlib
import itertools
import types
import warnings
from collections import OrderedDict
from typing import Callable, Optional

import torch

from .. import params as P
from ..distributed import mean_across_ranks
from ..params import Params

LIBRARY_WRAPPER = "__bilevel_wrapped__"  # set by the library's own wrappers of a loss (checks, random-state replay)
TRACE_KEY = "__bilevel_trace_key__"  # on an object whose methods are losses: what their traced program depends on
CACHE_SIZE = 32  # compiled functions kept (and failures remembered); the least recently used is dropped past it
# ((loss code, trace key), kind) -> the compiled function, which takes the loss as its first argument: the cache
# holds code objects and classes, never a loss or what it closes over (an Engine and its model)
_compiled: "OrderedDict[tuple[object, object], Callable]" = OrderedDict()
_failed: "OrderedDict[tuple[object, object], None]" = OrderedDict()  # torch.compile failed: these passes stay eager
_past_limit: "OrderedDict[tuple[object, object], None]" = OrderedDict()  # warned: past the recompile limit
_names = itertools.count()


class CompiledGradients:
    """A loss whose first derivatives :func:`bilevel.autodiff.loss_gradients` takes from a compiled
    ``torch.func.grad_and_value`` (see :func:`compile_gradients`); called, it is the loss."""

    def __init__(self, loss: Callable):
        self.loss = loss

    def __call__(self, inner_params: Params, outer_params: Params, batch):
        return self.loss(inner_params, outer_params, batch)


def _chain(loss: Callable):
    """``loss``, then what the library's own wrappers (:data:`LIBRARY_WRAPPER`) and the :class:`CompiledGradients`
    mark wrap under it, outermost first."""
    while True:
        yield loss
        if isinstance(loss, CompiledGradients):
            loss = loss.loss
        elif hasattr(loss, LIBRARY_WRAPPER):
            loss = getattr(loss, LIBRARY_WRAPPER)
        else:
            return


def plain_loss(loss: Callable) -> Callable:
    """``loss`` without the library's own wrappers: the function the graph is traced from. A user's wrapper
    (``functools.wraps`` or not) is part of the loss and stays."""
    *_, plain = _chain(loss)
    return plain


def _code(loss: Callable):
    """What identifies a loss's program: its function's code (the same for a method of every instance, so that two
    Engines share one graph; dynamo's guards read each one's own tensors), else its type; for a method, with what
    its instance names as the program it runs (:data:`TRACE_KEY`: the Engine's problem classes), so that losses of
    one code over different programs get graphs of their own."""
    function = getattr(loss, "__func__", loss)
    code = getattr(function, "__code__", None) or type(function)
    try:  # the instance's own attribute, read past any __getattr__ of its class
        namespace = object.__getattribute__(getattr(loss, "__self__", None), "__dict__")
    except AttributeError:
        return code, None
    return code, namespace.get(TRACE_KEY)


def _scalar(loss: Callable) -> Callable:
    return lambda w, x, batch: loss(w, x, batch).reshape(())  # a one-element loss, as the eager passes take it


def _matvec(loss: Callable, inner: Params, outer: Params, batch, vector: Params) -> Params:
    gradient = torch.func.grad(_scalar(loss))
    return torch.func.vjp(lambda w: gradient(w, outer, batch), inner)[1](vector)[0]


def _joint(loss: Callable, inner: Params, outer: Params, batch, vector: Params):
    gradient_and_loss = torch.func.grad_and_value(_scalar(loss))
    gradient, pullback, value = torch.func.vjp(lambda w, x: gradient_and_loss(w, x, batch), inner, outer,
                                               has_aux=True)
    hvp, mixed = pullback(vector)
    return hvp, mixed, gradient, value


def _gradient(argnums: tuple) -> Callable:
    def gradient(loss: Callable, inner: Params, outer: Params, batch):
        return torch.func.grad_and_value(_scalar(loss), argnums)(inner, outer, batch)

    return gradient


def _own_code(function: Callable) -> Callable:
    """``function`` with a code object of its own: dynamo keeps its graphs per code object, at most
    ``recompile_limit`` (8) of them before it runs the code eagerly, so each key gets its own."""
    code = function.__code__.replace(co_name=f"{function.__name__}_{next(_names)}")
    return types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__, function.__closure__)


def _compiled_function(key, template: Callable) -> Callable:
    """The compiled ``template`` for ``key``, compiled on first use."""
    function = _compiled.get(key)
    if function is None:
        function = _compiled[key] = torch.compile(_own_code(template))
    _remember(_compiled, key, function)
    return function


def _remember(cache: OrderedDict, key, value) -> None:
    """``cache[key] = value`` as the most recently used entry, dropping the least recently used past CACHE_SIZE."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)


@contextlib.contextmanager
def _raising_past_the_recompile_limit():
    """Dynamo raises, instead of running eagerly in silence, where a loss traces more variants than it keeps."""
    config = torch._dynamo.config
    previous, config.fail_on_recompile_limit_hit = config.fail_on_recompile_limit_hit, True
    try:
        yield
    finally:
        config.fail_on_recompile_limit_hit = previous


def _guarded(loss: Callable, kind, template: Callable, setting: str, what: str) -> Callable:
    """``(*args) -> template(plain loss, *args)``, compiled; None where the caller must take its eager pass: once
    torch.compile has failed on this loss and kind (warned once, and eager from then on), and where the loss traces
    more variants than torch.compile keeps (warned once; the variants compiled before stay compiled). An error of the
    loss itself, which the eager pass raises too, is raised as the eager pass raises it, and changes nothing."""
    plain = plain_loss(loss)
    key = (_code(plain), kind)
    if key in _failed:
        return lambda *args: None
    function = _compiled_function(key, template)
    name = getattr(plain, "__qualname__", plain)

    def call(*args):
        try:
            with _raising_past_the_recompile_limit():
                return function(plain, *args)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            if key not in _past_limit:
                _remember(_past_limit, key, None)
                warnings.warn(f"{setting}: {name!s} traced more than torch.compile's "
                              f"{torch._dynamo.config.recompile_limit} variants (other shapes, modules or "
                              f"attribute values under one code); its {what} for new variants are taken eagerly",
                              RuntimeWarning, stacklevel=4)
            return None
        except Exception as error:
            failure = error
        template(plain, *args)  # eagerly: an error of the loss itself is raised here, as the eager pass raises it
        _remember(_failed, key, None)
        first_line = (str(failure).strip().splitlines() or [type(failure).__name__])[0]
        warnings.warn(f"{setting}: torch.compile failed on {name!s} ({type(failure).__name__}: "
                      f"{first_line[:200]}); its {what} are taken eagerly", RuntimeWarning, stacklevel=4)
        return None

    return call


def compile_gradients(loss: Callable) -> CompiledGradients:
    """``loss(inner_params, outer_params, batch)`` marked so that every first-derivative pass of the library on it
    (the Engine's inner steps under ``EngineConfig(compile_gradients=True)``, the methods' gradients) runs as one
    compiled program: the same numbers as eager, up to rounding. Passes it cannot take stay eager: through a graph
    the parameters carry (an unroll), with ``create_graph``, or in parameters other than the two dicts the loss is
    called with; so do all passes of a loss torch.compile fails on (with one warning)."""
    return CompiledGradients(loss)


def compiled_gradients(loss: Callable, inner_params: Params, outer_params: Params, wrt,
                       create_graph: bool) -> Optional[Callable]:
    """``piece -> (loss, [d loss / d p for p in wrt])`` by the loss's compiled gradient (``None`` from it when
    torch.compile failed on the loss), or None where the eager pass must be taken: ``loss`` not marked by
    :func:`compile_gradients`, ``create_graph``, parameters with a graph of their own, or a ``wrt`` entry that is not
    ``inner_params`` or ``outer_params`` itself."""
    if create_graph or not any(isinstance(link, CompiledGradients) for link in _chain(loss)):
        return None
    argnums = tuple(0 if params is inner_params else 1 if params is outer_params else None for params in wrt)
    if None in argnums or len(set(argnums)) < len(argnums):
        return None
    if any(t.grad_fn is not None for params in (inner_params, outer_params) for t in params.values()):
        return None
    function = _guarded(loss, ("gradient", argnums), _gradient(argnums), "compile_gradients", "gradients")
    inner, outer = P.detached(inner_params), P.detached(outer_params)

    def on_piece(batch):
        computed = function(inner, outer, batch)
        if computed is None:
            return None
        grads, value = computed
        return value, [g[k] for g, params in zip(grads, wrt) for k in params]

    return on_piece


def compiled_matvec(loss: Callable, inner_params: Params, outer_params: Params, batch,
                    vector: Params) -> Optional[Params]:
    """``H v`` of ``loss`` at ``(inner_params, outer_params)`` on ``batch``, by the loss's compiled product (averaged
    across ranks under torch.distributed, as the eager products are); None where torch.compile failed on the loss
    (warned once): take the eager product."""
    product = _guarded(loss, "matvec", _matvec, "compile_products", "Hessian-vector products")(
        P.detached(inner_params), P.detached(outer_params), batch, P.detached(vector))
    return None if product is None else mean_across_ranks({k: product[k] for k in inner_params})


def compiled_products(loss: Callable, inner_params: Params, outer_params: Params, batch, vector: Params):
    """``(H v, (d^2 g / dx dw) v, grad_w g, g)`` at ``(inner_params, outer_params)`` on ``batch`` from one compiled
    call, as :meth:`InnerHessian.matvec_mixed_and_gradient` returns them (averaged across ranks in one collective);
    None where torch.compile failed on the loss (warned once): take the eager products."""
    computed = _guarded(loss, "joint", _joint, "compile_products", "second-derivative products")(
        P.detached(inner_params), P.detached(outer_params), batch, P.detached(vector))
    if computed is None:
        return None
    hvp, mixed, gradient, value = computed
    joint = {**{("w", k): hvp[k] for k in inner_params}, **{("x", k): mixed[k] for k in outer_params},
             **{("g", k): gradient[k] for k in inner_params},
             ("loss",): value.to(next(iter(gradient.values())).dtype).reshape(1)}  # one dtype: one collective
    joint = mean_across_ranks(joint)
    return ({k: joint[("w", k)] for k in inner_params}, {k: joint[("x", k)] for k in outer_params},
            {k: joint[("g", k)] for k in inner_params}, joint[("loss",)].reshape(()))
