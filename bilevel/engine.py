"""The outer loop: real inner steps, then a hypergradient step of the outer level; logging and validation."""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from . import checkpoint as _checkpoint
from . import methods as _methods
from .config import EngineConfig
from .distributed import any_across_ranks, is_distributed, mean_across_ranks, rank
from .history import MetricsHistory
from .hypergradient import hypergradient
from .params import Params, detached
from .autodiff import MicroBatches, StepBatches, compile_gradients, compiled, loss_gradients, parts
from .level import Level
from .validation import warn_caller
from .attention_kernels import check_second_order_support


class Engine:
    """Runs a bilevel problem: ``inner`` is trained on its data, ``outer`` is updated with hypergradients.

    Each outer step: ``config.inner_steps`` real optimizer steps of the inner level (outer parameters held fixed and
    detached), then one hypergradient of the outer loss through the inner level by ``method``, written into the outer
    parameters' ``.grad`` and applied by the outer optimizer. Method state (e.g. warm starts) is kept between steps.
    A method given by name (or as a ``MethodSpec``) is rebuilt before every hypergradient with the settings it
    declares taken from the live inner optimizer: ``finite_difference`` and ``unroll`` model the inner step, so they
    use its current learning rate (a scheduler's included), and an unroll its type and hyperparameters. A method
    object is taken as given, except for such settings left at ``None``.

    >>> engine = Engine(inner=Train(model, ...), outer=Validate(hyper, ...), method="cg",
    ...                 config=EngineConfig(outer_steps=200))
    >>> engine.run()
    """

    def __init__(self, inner: Level, outer: Level, method: Any = "finite_difference",
                 config: Optional[EngineConfig] = None,
                 on_validate: Optional[Callable[["Engine"], Optional[Dict[str, float]]]] = None,
                 on_step: Optional[Callable[["Engine", int], Any]] = None):
        self.inner, self.outer = inner, outer
        inner.outer, outer.inner = outer, inner
        self.config = config or EngineConfig()
        for level in (inner, outer):
            if level.optimizer is None:
                raise ValueError(f"Engine: problem '{level.name}' has no optimizer; pass optimizer=... to it")
        self._method_request = method
        self.method = self._current_method()
        self.on_validate, self.on_step = on_validate, on_step
        outer_ids = set(map(id, outer.stored_params.values()))
        shared = [name for name, p in inner.stored_params.items() if id(p) in outer_ids]
        if shared:
            raise ValueError(f"Engine: the inner and outer levels share parameters ({', '.join(shared)}, by their "
                             "inner names); each parameter belongs to one level")
        self.history = MetricsHistory(self.config.tensorboard_dir)
        self._autocast_dtype = getattr(torch, self.config.autocast_dtype) if self.config.autocast_dtype else None
        self._device = next(iter(inner.stored_params.values())).device  # where the stop flag is all-reduced
        device = self._device_type = self._device.type
        self._stop = False
        self._scaler = torch.amp.GradScaler(device, enabled=self._autocast_dtype is torch.float16)
        self.step = 0
        self.method_state: Any = None
        self.last_result: Optional[_methods.HypergradientResult] = None
        self._last_inner_batch: Any = None
        if self.config.compile_gradients:
            _check_traceable(inner, outer)
        self._unused_inner: Optional[set] = None  # found on the first compiled inner step
        # the losses' traced program is the levels' (their classes' losses over their modules): one graph per problem
        setattr(self, compiled.TRACE_KEY, tuple(type(o) for level in (inner, outer) for o in (level, level.module)))
        mark = compile_gradients if self.config.compile_gradients else (lambda loss: loss)
        self._losses = mark(self.inner_loss), mark(self.outer_loss)  # one object each: their graphs are found again

    # The two losses in functional form, as the methods see them.
    def inner_loss(self, inner_params: Params, outer_params: Params, batch: Any) -> torch.Tensor:
        with self.inner.bind(inner_params), self.outer.bind(outer_params), self._autocast():
            return _at_least_float32(self.inner.loss(batch))

    def outer_loss(self, inner_params: Params, outer_params: Params, batch: Any) -> torch.Tensor:
        with self.inner.bind(inner_params), self.outer.bind(outer_params), self._autocast():
            return _at_least_float32(self.outer.loss(batch))

    def _current_method(self) -> _methods.HypergradientMethod:
        """The method with the settings it declares taken from the inner optimizer as it is now."""
        return _methods.build(self._method_request, inner_optimizer=self.inner.optimizer)

    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device_type, dtype=self._autocast_dtype)

    def iteration(self) -> Tuple[_methods.HypergradientResult, float]:
        """One outer step with its inner steps, in the configured order; returns the result and the last inner loss."""
        config = self.config
        if self.method_state is None:  # before the inner parameters move (a fresh run, or one resumed from none)
            self.method_state = self.method.initial_state(self.inner.stored_params, self.outer.stored_params)
        if config.reuse_inner_gradient and config.inner_steps >= 1 and not self._scaler.is_enabled():
            result, inner_loss = self._outer_then_inner_step()
            for _ in range(config.inner_steps - 1):
                inner_loss = self.inner_step()
            return result, inner_loss
        inner_loss = math.nan
        for _ in range(config.inner_steps):
            inner_loss = self.inner_step()
        return self.outer_step(), inner_loss

    def _outer_then_inner_step(self):
        """DARTS' order: hypergradient at the current inner parameters on the next inner batch, outer update, then
        the real inner step on that batch with the inner gradient the method already computed (outer parameters as
        they were, exactly as an inner step taken first would see them): one forward and backward pass saved."""
        batch = self._next(self.inner)
        self._last_inner_batch = batch
        result = self.outer_step()
        if result.inner_grads is None:  # the method does not compute it: a separate inner step
            return result, self.inner_step()
        inner_loss = result.diagnostics.get("inner_loss")
        if inner_loss is not None:
            self._check_finite(torch.as_tensor(inner_loss), "inner", "loss")
        self.inner.optimizer.zero_grad(set_to_none=True)
        for name, parameter in self.inner.stored_params.items():
            parameter.grad = result.inner_grads[name].to(parameter.dtype)
        self._apply_gradients(self.inner, self.config.inner_grad_clip, self._scaler)
        return result, math.nan if inner_loss is None else float(inner_loss)

    @staticmethod
    def _apply_gradients(level: Level, clip: Optional[float], scaler: Optional[torch.amp.GradScaler] = None):
        """Clip, step and schedule ``level`` from the gradients in its ``.grad``: where both levels take a step."""
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(level.stored_params.values()), clip)
        if scaler is None:
            level.optimizer.step()
        else:
            scaler.step(level.optimizer)
            scaler.update()
        if level.scheduler is not None:
            level.scheduler.step()

    def inner_step(self) -> float:
        """One real optimizer step of the inner level on its next batch, outer parameters detached.

        With ``config.accumulation_steps = n`` the step accumulates gradients over n micro-batches.
        """
        batch = self._next(self.inner)
        self._last_inner_batch = batch
        self.inner.optimizer.zero_grad(set_to_none=True)
        if self.config.compile_gradients:  # the compiled gradient, averaged over micro-batches and ranks
            params = self.inner.stored_params
            if self._unused_inner is None:
                self._unused_inner = self._unused_inner_parameters(batch)
            total, (grads,) = loss_gradients(self._losses[0], params, detached(self.outer.stored_params), batch,
                                             (params,))
            self._check_finite(total, "inner", "loss")
            for name, parameter in params.items():  # None where backward would leave it: optimizers skip those
                parameter.grad = None if name in self._unused_inner else grads[name]
            self._apply_gradients(self.inner, self.config.inner_grad_clip)
            return float(total)
        pieces = parts(batch)
        total = 0.0
        for piece in pieces:
            with self.outer.bind(detached(self.outer.stored_params)), self._autocast():
                loss = self.inner.loss(piece) / len(pieces)
            self._check_finite(loss, "inner", "loss")
            self._scaler.scale(loss).backward()
            total = total + loss.detach()
        self._scaler.unscale_(self.inner.optimizer)
        total = _average_gradients(self.inner.stored_params, total)
        self._apply_gradients(self.inner, self.config.inner_grad_clip, self._scaler)
        return float(total)

    def _unused_inner_parameters(self, batch) -> set:
        """Names of the inner parameters the inner loss does not reach, by one eager pass: backward leaves their
        ``.grad`` None, so that optimizers skip them (no weight decay, no momentum), where a compiled gradient gives
        zeros."""
        params = self.inner.stored_params
        value = self.inner_loss(params, detached(self.outer.stored_params), parts(batch)[0])
        grads = torch.autograd.grad(value, list(params.values()), allow_unused=True)
        return {name for name, grad in zip(params, grads) if grad is None}

    def outer_step(self) -> _methods.HypergradientResult:
        """One hypergradient of the outer loss and one outer optimizer step."""
        self.method = self._current_method()
        fresh_inner, fresh_outer = self.method.batches_per_call()
        if fresh_inner:
            inner_batch = self._draw(self.inner, fresh_inner)
        else:
            inner_batch = self._last_inner_batch if self._last_inner_batch is not None else self._next(self.inner)
        result = hypergradient(*self._losses, self.inner.stored_params, self.outer.stored_params,
                               inner_batch, self._draw(self.outer, fresh_outer), self.method,
                               state=self.method_state, return_result=True, check_finite=False)
        if "outer_loss" in result.diagnostics:  # a method may return finite grads from a NaN loss (zero mixed term)
            self._check_finite(result.diagnostics["outer_loss"], "outer", "loss")
        finite = torch.stack([torch.isfinite(v).all() for v in result.grads.values()]).all()
        if self.config.check_finite and not bool(finite):
            for name, value in result.grads.items():  # one device sync per step; find the culprit only on failure
                self._check_finite(value, "outer", f"hypergradient of '{name}'")
        self.method_state = result.state
        for name, parameter in self.outer.stored_params.items():
            parameter.grad = result.grads[name].to(parameter.dtype)
        self._apply_gradients(self.outer, self.config.outer_grad_clip)
        self.outer.optimizer.zero_grad(set_to_none=True)
        self.last_result = result
        return result

    def run(self) -> MetricsHistory:
        """Run until ``config.outer_steps`` outer steps are done (continuing from ``self.step``)."""
        config = self.config
        if config.resume and self.step == 0:
            self.load_checkpoint()
        if config.validate_every and self.on_validate is None:
            warn_caller(f"Engine: validate_every={config.validate_every} but no on_validate was given, so nothing "
                        "is validated; pass on_validate=... to the Engine", UserWarning)
        if self.step > config.outer_steps:
            warn_caller(f"Engine: the run is already at step {self.step}, past outer_steps={config.outer_steps} (a "
                        "checkpoint of a longer run?); nothing to do", UserWarning)
        if config.seed is not None and self.step == 0:
            torch.manual_seed(config.seed)
        if self.method.needs_second_derivatives:
            for module in {id(p.module): p.module for p in (self.inner, self.outer) if p.module is not None}.values():
                check_second_order_support(module, self.method.name)
        if self.step == 0:
            for _ in range(config.warmup_inner_steps):
                self.inner_step()
        bar = _progress(config.outer_steps, self.step, config.progress)
        self._stop = False  # a stop asked at the end of an earlier run() (its last validation) is not this run's
        while self.step < config.outer_steps:
            result, inner_loss = self.iteration()
            self.step += 1
            last = self.step == config.outer_steps
            logged = self.step % config.log_every == 0 or last
            if logged:
                self._log(result, inner_loss, bar)
            validated = self.on_validate is not None and (
                (config.validate_every and self.step % config.validate_every == 0) or last)
            if validated:
                self._log_validation()
            if self.on_step is not None:
                self.on_step(self, self.step)
            stop = self._stop_requested()
            if stop and not logged:  # a stopped run ends as a finished one: its last step logged and validated
                self._log(result, inner_loss, bar)
            if stop and self.on_validate is not None and not validated:
                self._log_validation()
            if config.checkpoint_dir and ((config.checkpoint_every and self.step % config.checkpoint_every == 0)
                                          or last or stop):
                self.save_checkpoint()
            if bar is not None:
                bar.update(1)
            if stop:
                break
        if bar is not None:
            bar.close()
        return self.history

    def _log(self, result, inner_loss: float, bar) -> None:
        self.history.log(self.step, **{**_numeric(result.diagnostics), "inner_loss": inner_loss})
        if bar is not None:
            bar.set_postfix(inner_loss=f"{inner_loss:.4g}",
                            outer_loss=f"{self.history.last('outer_loss') or math.nan:.4g}")

    def _log_validation(self) -> None:
        metrics = self._validate()
        if metrics is None:
            return
        if not isinstance(metrics, Mapping):
            raise TypeError(f"Engine: on_validate must return a dict of numbers or None, got "
                            f"{type(metrics).__name__} ({metrics!r:.40}); return e.g. {{'loss': value}}")
        values = {}
        for key, value in metrics.items():
            try:
                values[f"val_{key}"] = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"Engine: on_validate returned {key!r}: {value!r:.40}, which is not a number; "
                                "return numbers (or one-element tensors)") from None
        if values:
            self.history.log(self.step, **values)

    def stop(self) -> None:
        """Ask the run to end after the current outer step (call it from ``on_step`` or ``on_validate``): the step is
        logged, validated and checkpointed as a last step is, and ``run()`` returns. A flag, not ``on_step``'s return
        value, so that a callback returning something (``file.write``'s count, ``tqdm.update``'s flag) stops nothing."""
        self._stop = True

    def _stop_requested(self) -> bool:
        """Whether ``stop()`` was called during this step; under torchrun the run stops when any rank asked, so that
        every rank stops at the same step."""
        asked, self._stop = self._stop, False
        if self.on_step is None and self.on_validate is None:
            return False  # nothing could have asked (the same on every rank): no collective on the step's path
        return any_across_ranks(asked, self._device)

    def _validate(self) -> Optional[Dict[str, float]]:
        """``on_validate`` with the global random generators (torch's, NumPy's, Python's) restored afterwards: what a
        validation draws (a sampled subset, dropout in train mode) leaves the run's random stream as it was, so neither
        the validation schedule nor the validation a run makes at its last step, which a resumed run does not, changes
        where training goes."""
        saved = _checkpoint.rng_state()
        try:
            return self.on_validate(self)
        finally:
            _checkpoint.set_rng_state(saved)

    def _next(self, level: Level) -> Any:
        """The next batch of a level, or ``accumulation_steps`` of them as :class:`MicroBatches`."""
        n = self.config.accumulation_steps
        return level.next_batch() if n == 1 else MicroBatches([level.next_batch() for _ in range(n)])

    def _draw(self, level: Level, count: int) -> Any:
        """``count`` fresh batches of a level for a method that asked for them: one batch, or :class:`StepBatches`."""
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"Engine: method '{self.method.name}' asked for {count!r} {level.name} batches per call; "
                             "batches_per_call() must return counts >= 1 (inner 0 reuses the last inner batch)")
        return self._next(level) if count == 1 else StepBatches([self._next(level) for _ in range(count)])

    def state_dict(self) -> Dict[str, Any]:
        """The full bilevel state: both levels, step counter, method state, history and every RNG."""
        return {"step": self.step, "inner": self.inner.state_dict(), "outer": self.outer.state_dict(),
                "method_state": self.method_state, "history": self.history.state_dict(),
                "last_inner_batch": self._last_inner_batch, "scaler": self._scaler.state_dict(),
                "rng": _checkpoint.rng_state(), "method": self.method.name}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        saved = state.get("method")  # absent from checkpoints written before it was recorded
        if saved is not None and saved != self.method.name:
            raise ValueError(f"Engine: the checkpoint was written by method '{saved}' and this run uses "
                             f"'{self.method.name}', whose state it cannot continue; resume with method '{saved}', "
                             "or start the new method in another checkpoint_dir")
        self.inner.check_state(state["inner"])  # both levels checked before either is touched
        self.outer.check_state(state["outer"])
        self.inner.load_state_dict(state["inner"])
        self.outer.load_state_dict(state["outer"])
        self.step, self.method_state = state["step"], state["method_state"]
        self.history.load_state_dict(state["history"])
        self._last_inner_batch = state["last_inner_batch"]
        self._scaler.load_state_dict(state["scaler"])
        _checkpoint.set_rng_state(state["rng"])  # last: loading the levels replays data-order RNG

    @property
    def checkpoint_path(self) -> Optional[str]:
        if not self.config.checkpoint_dir:
            return None
        return os.path.join(self.config.checkpoint_dir, _checkpoint.CHECKPOINT_NAME)

    def save_checkpoint(self) -> None:
        """Write the state atomically (temporary file, then rename); only rank 0 writes under torch.distributed."""
        if rank() == 0:
            _checkpoint.save_atomic(self.state_dict(), self.checkpoint_path)

    def load_checkpoint(self) -> bool:
        """Load ``checkpoint_dir``'s checkpoint if there is one; returns whether it did."""
        state = _checkpoint.load(self.checkpoint_path)
        if state is None:
            return False
        self.load_state_dict(state)
        return True

    def _check_finite(self, value: torch.Tensor, level: str, quantity: str) -> None:
        if self.config.check_finite and not bool(torch.isfinite(value).all()):
            raise FloatingPointError(f"Engine: non-finite {quantity} at outer step {self.step + 1} ({level} level); "
                                     "lower the learning rates, or check the data and the method's settings")


def _check_traceable(*levels: Level) -> None:
    """Refuse, in one line, what compiled passes cannot reproduce: dropout (its masks are not replayed inside a
    compiled graph) and BatchNorm statistics (a traced pass does not update them), in training mode."""
    seen = set()
    for level in levels:
        if level.module is None or id(level.module) in seen:
            continue
        seen.add(id(level.module))
        for name, layer in level.module.named_modules():
            if not layer.training:
                continue
            if isinstance(layer, torch.nn.modules.dropout._DropoutNd) and layer.p > 0:
                what = "replay dropout masks"
            elif isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
                what = "update BatchNorm running statistics"
            else:
                continue
            raise ValueError(f"Engine: compile_gradients cannot {what} ('{name or type(layer).__name__}' of problem "
                             f"'{level.name}' is in training mode); set compile_gradients=False or put that layer "
                             "in eval mode")


def _average_gradients(params: Params, loss: torch.Tensor) -> torch.Tensor:
    """DistributedDataParallel semantics for the real inner step: average ``.grad`` over ranks, and the loss with
    them in the same collective (so the logged loss is the global mean); returns the averaged loss."""
    if not is_distributed():
        return loss
    with_grad = {name: p.grad for name, p in params.items() if p.grad is not None}
    averaged = mean_across_ranks({**with_grad, None: loss.reshape(1).to(next(iter(with_grad.values())).dtype)
                                  if with_grad else loss.reshape(1)})
    loss = averaged.pop(None).reshape(())
    for name, value in averaged.items():
        params[name].grad = value
    return loss


def _at_least_float32(loss: torch.Tensor) -> torch.Tensor:
    """Half-precision losses from autocast are upcast; float32 and float64 losses keep their precision."""
    return loss.float() if loss.dtype in (torch.float16, torch.bfloat16) else loss


def _numeric(diagnostics: Dict[str, Any]) -> Dict[str, float]:
    out = {}
    for key, value in diagnostics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[key] = float(value)
        elif isinstance(value, (int, float)):  # booleans such as "converged" become 0/1
            out[key] = float(value)
    return out


def _progress(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional for bilevel
        return None
    return tqdm(total=total, initial=done, desc="outer steps", dynamic_ncols=True)
