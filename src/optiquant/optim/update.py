"""Applying updates to parameters."""

from __future__ import annotations

import torch

from optiquant._typing import Params, Updates
from optiquant.tree import tree_flatten, tree_leaves, tree_unflatten

__all__ = ["apply_updates"]


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
