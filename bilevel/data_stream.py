"""An endless stream of batches from an iterable, whose position a checkpoint can save and restore exactly."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, Optional

import torch


class DataStream:
    """Batches of ``data``, restarting it when exhausted; ``state_dict()`` is the position in the current pass.

    A shuffling DataLoader draws its order from torch's generator when iterated, or from its own (``generator=``, a
    sampler's): the stream remembers those states, and the data's own ``state_dict()`` when it has one, when each
    pass begins, so a restored stream replays the same order and skips the batches already drawn. A sampler (or
    dataset) with ``set_epoch``, as ``DistributedSampler``, gets the pass number before each pass, so every pass has
    a new order.
    """

    def __init__(self, data: Iterable, owner: str):
        self.data, self.owner = data, owner
        self._iterator: Optional[Iterator] = None
        self._epoch_rng: Optional[torch.Tensor] = None  # torch RNG state when the current pass began
        self._data_state: Optional[Dict[str, Any]] = None  # data.state_dict() when the current pass began
        self._generator_states: list = []  # states of the data's own torch generators when the current pass began
        self._drawn = 0  # batches drawn in the current pass
        self._epoch = -1  # number of the current pass (0 for the first); -1 before the first

    def next(self) -> Any:
        if self._iterator is None:
            self._start_pass()
        try:
            batch = next(self._iterator)
        except StopIteration:
            drew_before = self._drawn > 0
            self._start_pass()
            try:
                batch = next(self._iterator)
            except StopIteration:
                if drew_before and iter(self.data) is self.data:
                    raise ValueError(f"{self.owner}: data is an iterator, used up after one pass; pass an iterable "
                                     "that restarts (a DataLoader, a list), or an endless generator") from None
                raise ValueError(f"{self.owner}: data yields no batches; pass a non-empty iterable") from None
        self._drawn += 1
        return batch

    def _start_pass(self) -> None:
        """Record what the pass's order is drawn from, then begin it: the same steps whether the pass is new or
        re-created by ``load_state_dict`` from the recorded states."""
        self._epoch += 1
        self._epoch_rng = torch.random.get_rng_state()
        self._generator_states = [generator.get_state() for generator in _own_generators(self.data)]
        self._data_state = self.data.state_dict() if hasattr(self.data, "state_dict") else None
        for part in _epoch_aware_parts(self.data):
            part.set_epoch(self._epoch)
        self._iterator = iter(self.data)
        self._drawn = 0

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch_rng": self._epoch_rng, "drawn": self._drawn, "state": self._data_state, "epoch": self._epoch,
                "generators": self._generator_states}

    def load_state_dict(self, position: Dict[str, Any]) -> None:
        """Re-create the pass the position was saved in and advance it; torch's RNG is left as it was."""
        self._iterator, self._epoch_rng, self._drawn, self._epoch = None, None, 0, -1
        if position["epoch_rng"] is None:
            return
        self._epoch = position.get("epoch", 0) - 1  # _start_pass steps it to the saved pass
        current = torch.random.get_rng_state()
        torch.random.set_rng_state(position["epoch_rng"])
        generators, states = _own_generators(self.data), position.get("generators")
        if states is not None and len(states) != len(generators):
            raise ValueError(f"{self.owner}: the checkpoint's data had {len(states)} generator(s) of its own and "
                             f"this run's has {len(generators)}; resume with the data loader the checkpoint was "
                             "written with")
        for generator, state in zip(generators, states or []):
            generator.set_state(state)
        if position.get("state") is not None:
            self.data.load_state_dict(position["state"])
        self._start_pass()
        for _ in range(position["drawn"]):
            next(self._iterator)
        self._drawn = position["drawn"]
        torch.random.set_rng_state(current)


def _parts(data: Iterable) -> list:
    """``data``, its dataset and its samplers down every ``sampler``/``batch_sampler`` chain (a DistributedSampler
    inside a BatchSampler given as a DataLoader's sampler included), each once."""
    parts, seen, pending = [], set(), [data, getattr(data, "dataset", None)]
    while pending:
        part = pending.pop(0)
        if part is None or id(part) in seen:
            continue
        seen.add(id(part))
        parts.append(part)
        pending += [getattr(part, "sampler", None), getattr(part, "batch_sampler", None)]
    return parts


def _epoch_aware_parts(data: Iterable) -> list:
    """The parts of ``data`` that take ``set_epoch``: the convention by which DistributedSampler and streaming
    datasets reshuffle per pass."""
    return [part for part in _parts(data) if callable(getattr(part, "set_epoch", None))]


def _own_generators(data: Iterable) -> list:
    """The torch generators of ``data``'s parts (``DataLoader(generator=...)``, a sampler's ``generator``), each
    once: the order of a pass is drawn from them instead of torch's global generator."""
    found: Dict[int, torch.Generator] = {}
    for part in _parts(data):
        generator = getattr(part, "generator", None)
        if isinstance(generator, torch.Generator):
            found.setdefault(id(generator), generator)
    return list(found.values())
