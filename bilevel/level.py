"""One level of a bilevel problem: its parameters, optimizer, data and loss (the object layer's unit)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterable, Optional

import torch
from torch.func import functional_call

from .data_stream import DataStream
from .params import Params


class Level:
    """One level of a bilevel problem; subclass it and define ``loss(batch)``. (Called ``Problem`` before; that
    name still works. The whole problem as functions, for ``compare``, is :class:`bilevel.compare.BilevelProblem`.)

    Args:
        module: an ``nn.Module`` the loss runs (optional; a level may own plain tensors).
        params: the trainable parameters of this level: a dict ``name -> Parameter``, a list of parameter names of
            ``module``, or ``None`` for all of ``module``'s parameters that require grad.
        optimizer: a ``torch.optim.Optimizer`` over those parameters, or a callable ``params_list -> optimizer``.
        scheduler: an optional learning-rate scheduler, or a callable ``optimizer -> scheduler``; stepped after
            every optimizer step of this level.
        data: an iterable of batches, restarted when exhausted (``None`` when the loss needs no data).
        name: for messages and logs.

    Calling the problem, ``self(...)``, runs ``module`` through ``torch.func.functional_call`` with the parameters in
    play: during a hypergradient these are the values the method is evaluating (virtual steps, perturbations), for
    this level and for the other level when both share one module. A level reaches the other as ``self.inner`` or
    ``self.outer``, and reads parameters in play through ``self.params`` / ``self.outer.params``. While this level's
    parameters are bound (every pass of a hypergradient), buffers are passed as copies: passes inside a hypergradient
    never change BatchNorm statistics, which only the real optimizer steps of a level update.
    """

    def __init__(self, module: Optional[torch.nn.Module] = None, params: Any = None, optimizer: Any = None,
                 data: Optional[Iterable] = None, name: Optional[str] = None, scheduler: Any = None):
        self.name = name or type(self).__name__
        self.module = module
        self._params = self._resolve_params(params)
        self.optimizer = optimizer(list(self._params.values())) if _is_factory(optimizer) else optimizer
        self.scheduler = scheduler(self.optimizer) if callable(scheduler) and not hasattr(scheduler, "step") \
            else scheduler
        self.data = data
        self._bound: Optional[Params] = None
        self.inner: Optional[Level] = None
        self.outer: Optional[Level] = None

    def loss(self, batch: Any) -> torch.Tensor:
        raise NotImplementedError(f"{self.name}: define loss(self, batch) in your Level subclass")

    @property
    def params(self) -> Params:
        """Parameters in play: the bound values during a hypergradient pass, the stored ones otherwise."""
        return self._bound if self._bound is not None else self._params

    @property
    def stored_params(self) -> Dict[str, torch.Tensor]:
        """The parameters this level's optimizer updates."""
        return self._params

    @property
    def other(self) -> Optional["Level"]:
        return self.outer if self.outer is not None else self.inner

    @contextmanager
    def bind(self, params: Params):
        """Put ``params`` in play for this level inside the block."""
        previous, self._bound = self._bound, params
        try:
            yield
        finally:
            self._bound = previous

    def __call__(self, *args, **kwargs):
        if self.module is None:
            raise TypeError(f"{self.name}: this problem has no module to call; pass module=... when creating it")
        bound: Dict[str, torch.Tensor] = {}
        for level in (self.other, self):
            if level is not None and level._bound is not None and level.module is self.module:
                bound.update(level._bound)
        if not bound:
            return self.module(*args, **kwargs)
        # Bound here means a hypergradient pass: buffers are copies. A real step of the other level on a shared
        # module binds only that level's (detached) parameters, and its forward updates the buffers as usual.
        buffers = {} if self._bound is None else {name: b.clone() for name, b in self.module.named_buffers()}
        return functional_call(self.module, {**buffers, **bound}, args, kwargs, strict=False)

    @property
    def data(self) -> Optional[Iterable]:
        """The iterable of batches (``None`` when the loss needs no data); setting it starts a new stream."""
        return None if self._stream is None else self._stream.data

    @data.setter
    def data(self, data: Optional[Iterable]) -> None:
        self._stream = None if data is None else DataStream(data, self.name)

    def next_batch(self) -> Any:
        """The next batch of ``data``, restarting the iterable when it is exhausted."""
        return None if self._stream is None else self._stream.next()

    def state_dict(self) -> Dict[str, Any]:
        """Parameters, optimizer and scheduler state, module buffers, and the position in ``data``."""
        return {
            "params": {name: value.detach().clone() for name, value in self._params.items()},
            "buffers": {} if self.module is None else {n: b.clone() for n, b in self.module.named_buffers()},
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "data": None if self._stream is None else self._stream.state_dict(),
        }

    def check_state(self, state: Dict[str, Any]) -> None:
        """Refuse, in one line, a saved state whose parameters are not this level's (names or shapes)."""
        mismatched = [f"'{name}' {tuple(value.shape)} (this run: "
                      f"{tuple(self._params[name].shape) if name in self._params else 'absent'})"
                      for name, value in state["params"].items()
                      if name not in self._params or self._params[name].shape != value.shape]
        missing = sorted(set(self._params) - set(state["params"]))
        if mismatched or missing:
            raise ValueError(f"{self.name}: the checkpoint's parameters do not fit this run's: "
                             + "; ".join(mismatched + [f"'{name}' absent from the checkpoint" for name in missing])
                             + "; resume with the model the checkpoint was written with, or use another checkpoint_dir")

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the data iterator is re-created and advanced to the saved position."""
        self.check_state(state)
        with torch.no_grad():
            for name, value in state["params"].items():
                self._params[name].copy_(value)
            if self.module is not None:
                buffers = dict(self.module.named_buffers())
                for name, value in state["buffers"].items():
                    buffers[name].copy_(value)
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self._stream is not None and state["data"] is not None:
            self._stream.load_state_dict(state["data"])

    def _resolve_params(self, params: Any) -> Dict[str, torch.Tensor]:
        if params is None:
            if self.module is None:
                raise ValueError(f"{self.name}: pass params=... (a dict of tensors) or a module")
            resolved = {n: p for n, p in self.module.named_parameters() if p.requires_grad}
        elif isinstance(params, dict):
            resolved = dict(params)
        elif isinstance(params, (list, tuple)) and all(isinstance(p, str) for p in params):
            if self.module is None:
                raise ValueError(f"{self.name}: params given as names need a module to look them up in")
            available = dict(self.module.named_parameters())
            missing = [p for p in params if p not in available]
            if missing:
                raise ValueError(f"{self.name}: no parameters named {missing} in the module; it has "
                                 f"{_preview(list(available))}")
            resolved = {p: available[p] for p in params}
        else:
            raise TypeError(f"{self.name}: params must be a dict name -> tensor, a list of parameter names or None, "
                            f"got {type(params).__name__}")
        if not resolved:
            raise ValueError(f"{self.name}: no trainable parameters; pass params=... or unfreeze some")
        for name, value in resolved.items():
            if not (isinstance(value, torch.Tensor) and value.is_floating_point() and value.requires_grad):
                raise ValueError(f"{self.name}: parameter '{name}' must be a floating-point tensor with "
                                 "requires_grad=True")
        return resolved


def _is_factory(optimizer: Any) -> bool:
    return callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer)


def _preview(names: list, limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
