"""Validation of configuration fields, with errors that name the field and the value (no torch, no spts)."""

from __future__ import annotations

from typing import Any


def check_int(name: str, value: Any, minimum: int) -> None:
    """Refuse anything but an int (bools included) of at least ``minimum``, naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_budget(name: str, value: Any, allow_zero: bool) -> None:
    """Refuse a budget that is neither a token count nor a fraction of the prompt in (0, 1] ([0, 1] with
    ``allow_zero``), naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be an int (tokens) or a float in (0, 1] (fraction), got {value!r}")
    if isinstance(value, float):
        low_ok = value >= 0 if allow_zero else value > 0
        if not (low_ok and value <= 1):
            bound = "[0, 1]" if allow_zero else "(0, 1]"
            raise ValueError(f"{name}={value} as a fraction of the prompt must be in {bound}")
    elif value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}={value} as a token count must be {'>= 0' if allow_zero else '>= 1'}")
