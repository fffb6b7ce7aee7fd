"""Pieces shared by the PSGD transformations: refit decisions, momentum, clipping."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from optiquant.psgd._common import cpu_scalar, resolve_value
from optiquant.psgd.schedule import clock_tick
from optiquant.tree import tree_flatten, tree_unflatten

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


def check_param_leaf(index: int, p: Any) -> None:
    """Raise if parameter leaf ``index`` is not a non-empty floating-point tensor."""
    if not isinstance(p, torch.Tensor) or not p.is_floating_point():
        raise TypeError(f"params: leaf {index} must be a floating-point tensor, got {p!r:.60}")
    if p.numel() == 0:
        raise ValueError(f"params: leaf {index} is empty (shape {tuple(p.shape)})")


def momentum_buffer(p: torch.Tensor, b1: float, mu_dtype: torch.dtype | None) -> Any:
    """A zero momentum buffer like ``p`` (in ``mu_dtype`` if given), or None when ``b1 == 0``."""
    if b1 == 0:
        return None
    return torch.zeros_like(p, dtype=mu_dtype or p.dtype, memory_format=torch.contiguous_format)


def initial_state(state_type: Any, seed: int, spec: Any, mus: list[Any], qs: list[Any]) -> Any:
    """A fresh per-parameter PSGD state of ``state_type`` (counters at zero)."""
    return state_type(
        count=cpu_scalar(0),
        update_acc=cpu_scalar(0),
        scale_set=cpu_scalar(False, torch.bool),
        seed=cpu_scalar(seed),
        mu=tree_unflatten(spec, mus),
        Qs=tree_unflatten(spec, qs),
    )


def state_leaves(updates: Any, state: Any, state_type: Any) -> tuple[list[Any], Any, list, list]:
    """``(update leaves, their structure, momentum leaves, factor leaves)``; checks the state."""
    if not isinstance(state, state_type):
        raise TypeError(f"state: expected a {state_type.__name__}, got {type(state).__name__}")
    g_leaves, spec = tree_flatten(updates)
    return (
        g_leaves,
        spec,
        flatten_like(spec, state.mu, "state.mu"),
        flatten_like(spec, state.Qs, "state.Qs"),
    )
