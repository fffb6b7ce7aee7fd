"""Small helpers shared by the PSGD transformations: validation, seeding, dtypes."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch

from optiquant.tree import tree_flatten, tree_structure

__all__ = [
    "check_choice",
    "check_dtype",
    "check_number",
    "compute_dtype",
    "cpu_scalar",
    "eval_mask",
    "generator_for",
    "resolve_value",
    "step_seed",
]


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
    allow_callable: bool = False,
    integer: bool = False,
) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``name`` unless ``value`` is a number in range."""
    if value is None and allow_none:
        return
    if allow_callable and callable(value) and not isinstance(value, torch.Tensor):
        return
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name}: expected a scalar, got a tensor of shape {tuple(value.shape)}"
            )
        number = float(value.detach().reshape(()))
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "an int" if integer else "a number"
        raise TypeError(f"{name}: expected {kind}, got {type(value).__name__} ({value!r:.40})")
    else:
        number = float(value)
    if integer and (not isinstance(value, numbers.Integral)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} ({value!r:.40})")
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected a finite number, got {number}")
    if low is not None and (number < low or (low_open and number == low)):
        raise ValueError(
            f"{name}: expected a value {'>' if low_open else '>='} {low}, got {number}"
        )
    if high is not None and (number > high or (high_open and number == high)):
        raise ValueError(
            f"{name}: expected a value {'<' if high_open else '<='} {high}, got {number}"
        )


def check_dtype(name: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is ``None`` or a floating ``torch.dtype``."""
    if value is None:
        return
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise TypeError(f"{name}: expected None or a floating torch.dtype, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices!r}, got {value!r}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the preconditioner math runs in: ``dtype`` promoted to at least float32."""
    return torch.promote_types(dtype, torch.float32)


def cpu_scalar(value: int | float, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A 0-d tensor on the CPU (schedule state lives on the host: no device syncs)."""
    return torch.tensor(value, dtype=dtype)


_MASK64 = (1 << 64) - 1


def step_seed(seed: int, count: int, stream: int = 0) -> int:
    """A well-mixed 63-bit seed from ``(seed, count, stream)`` (SplitMix64 finaliser).

    Every process computes the same value, so random probes agree across ranks.

    >>> step_seed(0, 1) == step_seed(0, 1), step_seed(0, 1) != step_seed(0, 2)
    (True, True)
    """
    z = (
        seed * 0x9E3779B97F4A7C15 + count * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB
    ) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def generator_for(device: torch.device, seed: int) -> torch.Generator:
    """A fresh generator on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def eval_mask(mask: Any, tree: Any, name: str) -> list[bool] | None:
    """Evaluate a boolean mask (a tree like ``tree``, or a callable on it) into a flat list."""
    if mask is None:
        return None
    if callable(mask):
        mask = mask(tree)
    spec = tree_structure(tree)
    leaves, mask_spec = tree_flatten(mask)
    if mask_spec != spec:
        raise ValueError(
            f"{name}: expected a tree of bools with the structure of the params, got {mask_spec} "
            f"for params {spec}"
        )
    out = []
    for index, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor) and leaf.numel() == 1 and leaf.dtype == torch.bool:
            leaf = bool(leaf)
        if not isinstance(leaf, bool):
            raise TypeError(f"{name}: leaf {index} must be a bool, got {type(leaf).__name__}")
        out.append(leaf)
    return out


def resolve_value(name: str, value: float | Callable[[int], Any], count: int) -> float:
    """``value`` itself, or ``value(count)`` for a schedule, as a Python float."""
    out: Any = value(count) if callable(value) and not isinstance(value, torch.Tensor) else value
    if isinstance(out, torch.Tensor):
        return float(out.detach().reshape(()))
    return float(out)
