"""Weight decay added to the updates (coupled L2 before a preconditioner, decoupled after)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from optiquant._typing import OptState, Params, Updates
from optiquant.optim._validate import check_non_negative
from optiquant.optim.base import EmptyState, GradientTransformation, identity
from optiquant.optim.transform._ops import ListOps, use_foreach
from optiquant.tree import check_same_structure, tree_flatten, tree_leaves, tree_unflatten

__all__ = ["add_decayed_weights", "resolve_mask"]

Mask = Any  # a tree of bools like the params, or a callable params -> such a tree


def resolve_mask(mask: Mask, tree: Any, name: str = "mask") -> list[bool]:
    """Evaluate ``mask`` (a bool tree or a predicate returning one) against ``tree``'s leaves.

    >>> import torch
    >>> params = {"w": torch.ones(2, 2), "b": torch.ones(2)}
    >>> resolve_mask(lambda p: {k: v.ndim > 1 for k, v in p.items()}, params)
    [False, True]
    """
    value = mask(tree) if callable(mask) else mask
    check_same_structure(tree, value, "params", name)
    flags = tree_leaves(value)
    for index, flag in enumerate(flags):
        if flag is not None and not isinstance(flag, bool):
            raise TypeError(f"{name}: leaf {index} must be a bool, got {type(flag).__name__}")
    return [bool(f) for f in flags]


def add_decayed_weights(
    weight_decay: float | torch.Tensor = 0.0,
    mask: Mask | Callable[[Params], Any] | None = None,
    *,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Add ``weight_decay * params`` to the updates (only where ``mask`` is true, if given).

    >>> import torch
    >>> tx = add_decayed_weights(0.1)
    >>> p = torch.tensor([2.0])
    >>> tx.update(torch.tensor([1.0]), tx.init(p), p)[0]
    tensor([1.2000])
    """
    check_non_negative(weight_decay, "weight_decay")
    if isinstance(weight_decay, (int, float)) and weight_decay == 0:
        return identity()

    def init(params: Params) -> OptState:
        del params
        return EmptyState()

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        del extra_args
        if params is None:
            raise ValueError(
                "add_decayed_weights needs params: call update(updates, state, params)"
            )
        leaves, spec = tree_flatten(updates)
        param_leaves = tree_leaves(params)
        if len(param_leaves) != len(leaves):
            raise ValueError(
                f"updates and params must have the same structure, got {len(leaves)} and "
                f"{len(param_leaves)} leaves"
            )
        flags = resolve_mask(mask, params) if mask is not None else [True] * len(leaves)
        idx = [
            i
            for i, u in enumerate(leaves)
            if u is not None and flags[i] and param_leaves[i] is not None
        ]
        ops = ListOps(inplace=inplace, foreach=use_foreach(foreach, weight_decay))
        ps = [param_leaves[i] if not inplace else param_leaves[i].detach() for i in idx]
        out = ops.add([leaves[i] for i in idx], ps, weight_decay)
        for i, v in zip(idx, out):
            leaves[i] = v
        return tree_unflatten(spec, leaves), state

    return GradientTransformation(init, update)
