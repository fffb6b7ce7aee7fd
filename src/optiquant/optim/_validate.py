"""Argument checks shared by transformations and aliases; each names the argument."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "check_beta",
    "check_betas",
    "check_bool",
    "check_non_negative",
    "check_positive",
    "check_scalar_or_schedule",
]


def _as_float(value: Any, name: str) -> float | None:
    """The value as a float when it is a plain number or a 0-d tensor without grad; else None."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got bool {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name} must be a scalar (a 0-d tensor), got shape {tuple(value.shape)}"
            )
        if value.requires_grad:
            return None
        return float(value.detach().cpu().item())
    raise TypeError(f"{name} must be a float or a 0-d tensor, got {type(value).__name__}")


def check_non_negative(value: Any, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is finite and >= 0 (tensors are checked too)."""
    x = _as_float(value, name)
    if x is not None and not (math.isfinite(x) and x >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")


def check_positive(value: Any, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is finite and > 0."""
    x = _as_float(value, name)
    if x is not None and not (math.isfinite(x) and x > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {x!r}")


def check_beta(value: Any, name: str) -> None:
    """Raise ``ValueError`` unless ``0 <= value < 1``."""
    x = _as_float(value, name)
    if x is not None and not (0.0 <= x < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {x!r}")


def check_betas(betas: Any, name: str = "betas") -> tuple[Any, Any]:
    """Check a pair of betas, each in [0, 1); return it as a tuple."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{name} must be a pair (beta1, beta2), got {betas!r}")
    check_beta(betas[0], f"{name}[0]")
    check_beta(betas[1], f"{name}[1]")
    return betas[0], betas[1]


def check_scalar_or_schedule(value: Any, name: str) -> None:
    """Accept a non-negative number, a 0-d tensor or a callable schedule."""
    if callable(value) and not isinstance(value, torch.Tensor):
        return
    check_non_negative(value, name)


def check_bool(value: Any, name: str) -> None:
    """Raise ``TypeError`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def is_schedule(value: Any) -> bool:
    """Whether ``value`` is a schedule (a callable that is not a tensor)."""
    return callable(value) and not isinstance(value, torch.Tensor)


Schedule = Callable[[Any], Any]
