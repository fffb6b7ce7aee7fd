"""Applying updates to parameters."""

from __future__ import annotations

from typing import Any

import torch

from optiquant._typing import OptState, Params, Updates
from optiquant.optim.base import GradientTransformation
from optiquant.tree import all_tensors, tree_flatten, tree_leaves, tree_unflatten

__all__ = ["apply_updates", "update_and_apply"]


def apply_updates(params: Params, updates: Updates, *, inplace: bool = True) -> Params:
    """Return ``params + updates`` (``None`` updates leave a parameter unchanged).

    With ``inplace=True`` the parameters' data are changed in place (no autograd record)
    and the same tensors are returned; with ``inplace=False`` new tensors are returned and
    autograd flows through them.

    >>> import torch
    >>> p = {"w": torch.tensor([1.0])}
    >>> apply_updates(p, {"w": torch.tensor([0.5])})["w"]
    tensor([1.5000])
    """
    p_leaves, spec = tree_flatten(params)
    u_leaves = tree_leaves(updates)
    if len(p_leaves) != len(u_leaves):
        raise ValueError(
            f"params and updates must have the same structure, got {len(p_leaves)} and "
            f"{len(u_leaves)} leaves"
        )
    if inplace and all_tensors(p_leaves) and all_tensors(u_leaves):
        if p_leaves:  # the common case: every leaf has an update
            with torch.no_grad():
                torch._foreach_add_(p_leaves, u_leaves)
        return params
    pairs = [
        (i, p, u)
        for i, (p, u) in enumerate(zip(p_leaves, u_leaves))
        if u is not None and p is not None
    ]
    for i, p, u in pairs:
        if not isinstance(p, torch.Tensor) or not isinstance(u, torch.Tensor):
            raise TypeError(
                f"params/updates leaf {i} must be tensors, got "
                f"{type(p).__name__}/{type(u).__name__}"
            )
    if inplace:
        if pairs:
            with torch.no_grad():
                torch._foreach_add_([p for _, p, _ in pairs], [u for _, _, u in pairs])
        return params
    out = list(p_leaves)
    for i, p, u in pairs:
        out[i] = p + u
    return tree_unflatten(spec, out)


def update_and_apply(
    transformation: GradientTransformation,
    grads: Updates,
    state: OptState,
    params: Params,
    *,
    inplace: bool = True,
    **extra_args: Any,
) -> tuple[Params, OptState]:
    """One optimizer step: ``transformation.update`` then :func:`apply_updates`.

    Returns ``(params, state)``. With ``inplace=True`` the parameters are changed in
    place (and returned), and the gradient buffers and the state may be reused; where the
    transformation has a fused step (``apply_fused``: Adam, AdamW, SGD, Adagrad, ... with
    plain-number hyperparameters on the CPU) it runs as one kernel that reads and writes
    each parameter once, instead of computing the update and adding it in a second pass.
    With ``inplace=False`` nothing is mutated and autograd flows through the result.

    >>> import torch, optiquant as oq
    >>> params = {"w": torch.tensor([1.0, 2.0])}
    >>> tx = oq.adam(lr=0.1)
    >>> state = tx.init(params)
    >>> params, state = oq.update_and_apply(tx, {"w": torch.tensor([1.0, -1.0])}, state, params)
    >>> params["w"]
    tensor([0.9000, 2.1000])
    """
    if not isinstance(transformation, GradientTransformation):
        raise TypeError(
            f"transformation must be a GradientTransformation, got {type(transformation).__name__}"
        )
    if inplace and transformation.apply_fused is not None and not extra_args:
        n_params, n_grads = len(tree_leaves(params)), len(tree_leaves(grads))
        if n_params != n_grads:
            raise ValueError(
                f"params and grads must have the same structure, got {n_params} and "
                f"{n_grads} leaves"
            )
        new_state = transformation.apply_fused(params, grads, state)
        if new_state is not None:
            return params, new_state
    updates, new_state = transformation.update(grads, state, params, inplace=inplace, **extra_args)
    return apply_updates(params, updates, inplace=inplace), new_state
