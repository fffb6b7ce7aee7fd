"""Pieces shared by the PSGD transformations: refit decisions, momentum, clipping."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from optiquant.psgd._common import resolve_value
from optiquant.psgd.schedule import clock_tick

__all__ = ["DAMPING", "FitDecision", "clip_global_norm", "decide_fit", "flatten_like", "momentum"]

#: Relative size of the noise mixed into a gradient before whitening it.
DAMPING = math.sqrt(torch.finfo(torch.float32).eps)


class FitDecision:
    """What one step does with the preconditioner."""

    __slots__ = ("acc", "count", "fit", "newton")

    def __init__(self, count: int, acc: int, fit: bool, newton: bool) -> None:
        self.count, self.acc, self.fit, self.newton = count, acc, fit, newton


def decide_fit(
    count: int,
    acc: int,
    probability: float | Callable[[int], Any],
    update_preconditioner: Any,
    hvp: Any,
    vector: Any,
) -> FitDecision:
    """Hessian mode when ``update_preconditioner`` is given, else the whitening clock."""
    if update_preconditioner is not None:
        fit = bool(update_preconditioner)
        if fit and (hvp is None or vector is None):
            raise ValueError("Hvp and vector: both are required when update_preconditioner is true")
        return FitDecision(count + 1, acc, fit, True)
    if hvp is not None or vector is not None:
        raise ValueError("update_preconditioner: required (True/False) when Hvp or vector is given")
    p = resolve_value("preconditioner_update_probability", probability, count)
    acc, fit = clock_tick(acc, p)
    return FitDecision(count + 1, acc, fit, False)


def momentum(
    g: torch.Tensor,
    m: torch.Tensor | None,
    b1: float,
    count: int,
    *,
    nesterov: bool,
    inplace: bool,
    dtype: torch.dtype,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """EMA momentum update; returns the new buffer and the bias-corrected direction."""
    if b1 == 0 or m is None:
        return m, g.to(dtype)
    gm = g.to(m.dtype)
    if inplace:
        m.lerp_(gm, 1.0 - b1)
        m_new = m
    else:
        m_new = torch.lerp(m, gm, 1.0 - b1)
    if nesterov:
        mhat = m_new.to(dtype) * (b1 / (1.0 - b1 ** (count + 1))) + g.to(dtype) * (
            (1.0 - b1) / (1.0 - b1**count)
        )
    else:
        mhat = m_new.to(dtype) / (1.0 - b1**count)
    return m_new, mhat


def clip_global_norm(tensors: list[torch.Tensor], max_norm: float | None) -> list[torch.Tensor]:
    """Scale all ``tensors`` together so that their global L2 norm is at most ``max_norm``."""
    if max_norm is None or not tensors:
        return tensors
    norms = torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])
    total = torch.linalg.vector_norm(norms)
    factor = torch.clamp(max_norm / total.clamp_min(1e-30), max=1.0)
    return [t * factor.to(t.dtype) for t in tensors]


def flatten_like(spec: Any, tree: Any, name: str) -> list[Any]:
    """The subtrees of ``tree`` at the leaves of ``spec`` (``ValueError`` on mismatch)."""
    try:
        return spec.flatten_up_to(tree)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name}: does not match the structure of the updates ({err})") from None
