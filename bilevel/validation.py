"""Checks of user settings that raise one-line errors naming the setting."""
from __future__ import annotations


def require_positive(owner: str, **values) -> None:
    """Raise ``ValueError`` naming the first setting that is not > 0."""
    for key, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{owner}: {key} must be a number > 0, got {value!r}")


def require_positive_integer(owner: str, **values) -> None:
    """Raise ``ValueError`` naming the first setting that is not an integer >= 1 (counts of steps or iterations)."""
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}: {key} must be an integer >= 1, got {value!r}")


def warn_caller(message: str, category: type = RuntimeWarning) -> None:
    """Warn, attributing the warning to the first frame outside this package (the user's call)."""
    import os
    import sys
    import warnings

    package = os.path.dirname(os.path.abspath(__file__))
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the caller of this function
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def require_decay_exponent(owner: str, **values) -> None:
    """Raise ``ValueError`` naming the first step-size decay exponent that is neither ``None`` (constant steps) nor in
    (0, 1] (the step at call t is ``step * t**-decay``)."""
    for key, value in values.items():
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
            raise ValueError(f"{owner}: {key} must be None (constant steps) or a number in (0, 1], got {value!r}")
