"""Method specs: the short strings that name a hypergradient method and its settings, e.g. ``cg:5,10,20``.

Grammar (one spec; a list of specs is separated by whitespace)::

    spec   := name [ ":" item { "," item } ]
    item   := count | key "=" value
    count  := a positive integer
    value  := an integer, a float, true / false, none, or a bare word

``name`` is any registered method (``bilevel.methods.names()``). Each ``count`` gives one run whose main count is
that number: the setting the method declares as its ``main_count`` (``iterations`` for cg and neumann, ``steps`` for
unroll); methods without a main count take no counts.
``key=value`` items are settings of the method (its dataclass fields) and apply to every run of the spec:

    cg:5,10,20                 -> cg with iterations 5, 10 and 20
    unroll:1,5,lr=0.05         -> unroll with steps 1 and 5, both with lr 0.05
    finite_difference:lr=0.1   -> one run
    first_order                -> one run with the defaults
"""
from __future__ import annotations

import dataclasses
from typing import Any, List

from .. import methods as _methods
from ..methods import MethodSpec


class SpecError(ValueError):
    """A method spec that does not follow the grammar; the message is one line that says what to change."""


def setting_names(name: str) -> List[str]:
    """The settings (dataclass fields) of the registered method ``name``; every registered name runs with defaults."""
    method = _methods.get(name)
    return [f.name for f in dataclasses.fields(method)] if dataclasses.is_dataclass(method) else []


def _value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_spec(text: str) -> List[MethodSpec]:
    """The runs of one spec string (see the module docstring for the grammar)."""
    name, colon, rest = text.strip().partition(":")
    key = name.lower()
    if key not in _methods.names():
        raise SpecError(f"method spec '{text}': unknown method '{name}'; registered methods: "
                        f"{', '.join(_methods.names())}")
    valid = setting_names(key)
    main = _methods.get(key).main_count
    counts, settings = [], {}
    for item in (rest.split(",") if rest else []):
        item = item.strip()
        if "=" in item:
            setting, _, value = item.partition("=")
            setting = setting.strip()
            if setting not in valid:
                raise SpecError(f"method spec '{text}': '{setting}' is not a setting of {key}; settings: "
                                f"{', '.join(valid) or 'none'}")
            settings[setting] = _value(value.strip())
        elif item.isdigit() and int(item) > 0:
            if main is None:
                raise SpecError(f"method spec '{text}': {key} takes no count; give settings as key=value "
                                f"(settings: {', '.join(valid) or 'none'})")
            counts.append(int(item))
        else:
            raise SpecError(f"method spec '{text}': '{item}' is neither a positive integer count nor key=value")
    if colon and not counts and not settings:
        raise SpecError(f"method spec '{text}': nothing after ':'; write e.g. '{key}' or '{key}:key=value'")
    extra = ",".join(f"{k}={v}" for k, v in settings.items())
    if not counts:
        runs = [MethodSpec(key, dict(settings), f"{key}:{extra}" if extra else key)]
    else:
        runs = [MethodSpec(key, {**settings, main: n}, f"{key}:{n}" + (f",{extra}" if extra else ""))
                for n in counts]
    for run in runs:  # fail on bad values now, with the method's own message, not halfway through a comparison
        try:
            run.build()
        except (TypeError, ValueError) as error:
            raise SpecError(f"method spec '{text}': {str(error).splitlines()[0]}") from None
    return runs


def parse_specs(texts: List[str] | str) -> List[MethodSpec]:
    """All runs of several specs (a list, or one whitespace-separated string)."""
    if isinstance(texts, str):
        texts = texts.split()
    if not texts:
        raise SpecError("method specs: none given; e.g. 'cg:5,10 neumann:20 unroll:1,5 finite_difference'")
    return [run for text in texts for run in parse_spec(text)]
