"""Clipping: by global norm (as ``torch.nn.utils.clip_grad_norm_``) and by value."""

from __future__ import annotations

import math
from typing import Any

import torch

from optiquant._typing import OptState, Params, Updates
from optiquant.optim._validate import check_positive
from optiquant.optim.base import EmptyState, GradientTransformation
from optiquant.optim.transform._ops import ListOps, Selection, use_foreach

__all__ = ["clip_by_value", "clip_grad_norm"]


def _stateless_init(params: Params) -> OptState:
    del params
    return EmptyState()


def clip_grad_norm(
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    *,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Scale all updates together so that their global norm is at most ``max_norm``.

    The scale is ``min(1, max_norm / (norm + 1e-6))``, computed on the device without a
    host sync (unless ``error_if_nonfinite``), and differentiable in differentiable mode.

    >>> import torch
    >>> tx = clip_grad_norm(1.0)
    >>> u, _ = tx.update({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}, tx.init(None))
    >>> round(float(torch.hypot(u["a"], u["b"])), 4)
    1.0
    """
    check_positive(max_norm, "max_norm")
    norm_type = float(norm_type)
    if not (norm_type > 0 or math.isinf(norm_type)):
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type!r}")

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        del params, extra_args
        sel = Selection(updates, [], [])
        gs = sel.updates
        if not gs:
            return updates, state
        with torch.no_grad() if inplace else torch.enable_grad():
            norms = [torch.linalg.vector_norm(g, norm_type) for g in gs]
            device = gs[0].device
            total = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), norm_type)
            if error_if_nonfinite and not bool(torch.isfinite(total)):
                raise RuntimeError(
                    f"the total norm of order {norm_type} of the updates is non-finite "
                    f"({float(total)})"
                )
            coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        ops = ListOps(
            inplace=inplace, foreach=use_foreach(foreach) and len({g.device for g in gs}) == 1
        )
        return sel.updates_tree(ops.mul(gs, coef.to(gs[0].dtype) if inplace else coef)), state

    return GradientTransformation(_stateless_init, update)


def clip_by_value(min_value: float, max_value: float) -> GradientTransformation:
    """Clamp every update element to ``[min_value, max_value]``.

    >>> import torch
    >>> tx = clip_by_value(-1.0, 1.0)
    >>> tx.update(torch.tensor([-3.0, 0.5, 2.0]), tx.init(None))[0]
    tensor([-1.0000,  0.5000,  1.0000])
    """
    if not min_value <= max_value:
        raise ValueError(f"min_value must be <= max_value, got {min_value!r} > {max_value!r}")

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        del params, extra_args
        sel = Selection(updates, [], [])
        if inplace:
            out = [g.clamp_(min_value, max_value) for g in sel.updates]
        else:
            out = [torch.clamp(g, min_value, max_value) for g in sel.updates]
        return sel.updates_tree(out), state

    return GradientTransformation(_stateless_init, update)
