"""Settings read from environment variables."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

__all__ = ["env_number"]

N = TypeVar("N", int, float)


def env_number(name: str, default: N, kind: Callable[[str], N]) -> N:
    """The value of the environment variable ``name`` read with ``kind`` (``int`` or
    ``float``); ``default`` when it is unset or blank. Raises ``ValueError`` naming the
    variable when it is not a number of that kind, or is negative.

    >>> env_number("OPTIQUANT_SURELY_UNSET", 3, int)
    3
    """
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    what = "an integer" if kind is int else "a number"
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ValueError(f"environment variable {name}: expected {what}, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"environment variable {name}: expected a value >= 0, got {raw!r}")
    return value
