"""Checks of user settings that raise one-line errors naming the setting."""
from __future__ import annotations


def require_positive(owner: str, **values) -> None:
    """Raise ``ValueError`` naming the first setting that is not > 0."""
    for key, value in values.items():
        if value is None or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{owner}: {key} must be > 0, got {value!r}")


def require_positive_integer(owner: str, **values) -> None:
    """Raise ``ValueError`` naming the first setting that is not an integer >= 1 (counts of steps or iterations)."""
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}: {key} must be an integer >= 1, got {value!r}")
