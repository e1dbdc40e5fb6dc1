"""Build argparse options from config dataclasses, and the dataclasses back from the parsed namespace.

Each field becomes ``--field-name`` with the field's ``metadata["help"]`` and its default in the help text.
Types: bool -> ``--x/--no-x``; ``list[T]`` -> one or more values; ``dict`` -> a JSON object; ``T | None`` -> T.
A field name shared by several of the dataclasses (those of the command and those in ``prefixes``) gets its
dataclass's prefix (``--search-seed``, ``--retrain-seed``), the same in every command.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections import Counter

from .config import FieldError

__all__ = ["add_dataclass_arguments", "dataclasses_from_args"]


def _unwrap_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"epsilon\": 0.01}}', got {text!r}")
    return value


def _option_name(cls, name: str, collisions: set[str], prefixes: dict) -> str:
    if name in collisions and cls in prefixes:
        return f"{prefixes[cls]}_{name}"
    return name


def add_dataclass_arguments(parser: argparse.ArgumentParser, classes: list[type],
                            prefixes: dict[type, str]) -> None:
    """Add one argument group per dataclass in ``classes`` to ``parser``."""
    # Collisions are counted over the prefixed classes too, so a flag is spelled the same in every command.
    counts = Counter(f.name for cls in dict.fromkeys([*classes, *prefixes]) for f in dataclasses.fields(cls))
    collisions = {name for name, n in counts.items() if n > 1}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().splitlines()[0])
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            dest = _option_name(cls, f.name, collisions, prefixes)
            flag = "--" + dest.replace("_", "-")
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            help_text = f.metadata.get("help", "") + f" (default: {json.dumps(default)})"
            tp = _unwrap_optional(hints[f.name])
            kwargs = {"dest": dest, "default": default, "help": help_text}
            origin = typing.get_origin(tp)
            if tp is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif origin is list:
                (item,) = typing.get_args(tp) or (str,)
                kwargs.update(nargs="+", type=item)
            elif tp is dict or origin is dict:
                kwargs.update(type=_json_object, metavar="JSON")
            elif tp in (int, float, str):
                kwargs["type"] = tp
            else:
                raise TypeError(f"add_dataclass_arguments: {cls.__name__}.{f.name} has unsupported type {tp}")
            group.add_argument(flag, **kwargs)
    parser.set_defaults(_dataclass_fields={cls: {f.name: _option_name(cls, f.name, collisions, prefixes)
                                                 for f in dataclasses.fields(cls) if f.init} for cls in classes})


def dataclasses_from_args(namespace: argparse.Namespace) -> dict[type, object]:
    """Instantiate every dataclass added by `add_dataclass_arguments` from the parsed ``namespace``.

    A bad value names the flag the user typed (``--search-max-steps must be ...``), not the field.
    """
    configs = {}
    for cls, fields in namespace._dataclass_fields.items():
        try:
            configs[cls] = cls(**{name: getattr(namespace, dest) for name, dest in fields.items()})
        except FieldError as error:
            if error.field not in fields:
                raise
            raise ValueError(f"--{fields[error.field].replace('_', '-')} {error.message}") from None
    return configs
