"""Small helpers on flat lists of tensors, shared by the solvers and the gradient rules."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optree
import torch

from optiquant.tree import tree_flatten, tree_unflatten

Flat = list[torch.Tensor]


def flatten_tensors(tree: Any, name: str) -> tuple[Flat, optree.PyTreeSpec]:
    """Flatten ``tree``; raise ``TypeError`` naming ``name`` if a leaf is not a tensor."""
    leaves, spec = tree_flatten(tree)
    for index, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(
                f"{name}: every leaf must be a torch.Tensor, but leaf {index} is "
                f"{type(leaf).__name__}"
            )
    return leaves, spec


def flat_operator(
    fn: Callable[[Any], Any], spec: optree.PyTreeSpec, shapes: Sequence[torch.Size], name: str
) -> Callable[[Flat], Flat]:
    """Wrap a tree-to-tree linear map as a list-to-list map, checking its output structure."""

    def apply(xs: Flat) -> Flat:
        out = fn(tree_unflatten(spec, xs))
        leaves, out_spec = tree_flatten(out)
        if out_spec != spec:
            raise ValueError(
                f"{name} must return a tree with the structure of its input {spec}, got {out_spec}"
            )
        for index, (leaf, shape) in enumerate(zip(leaves, shapes)):
            if not isinstance(leaf, torch.Tensor) or leaf.shape != shape:
                got = tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else type(leaf).__name__
                raise ValueError(
                    f"{name}: output leaf {index} must have shape {tuple(shape)}, got {got}"
                )
        return leaves

    return apply


def dot(xs: Flat, ys: Flat) -> torch.Tensor:
    """``sum_i <x_i, y_i>`` as a 0-d tensor (complex inputs conjugate ``x``)."""
    total = torch.zeros((), dtype=xs[0].dtype, device=xs[0].device)
    for x, y in zip(xs, ys):
        total = total + torch.vdot(x.reshape(-1), y.reshape(-1))
    return total


def axpy(alpha: torch.Tensor | float, xs: Flat, ys: Flat) -> Flat:
    """``y_i + alpha * x_i`` for every leaf, out of place."""
    return [y + alpha * x for x, y in zip(xs, ys)]


def to_vector(xs: Flat) -> torch.Tensor:
    """Concatenate the leaves into one vector."""
    if not xs:
        return torch.zeros(0)
    return torch.cat([x.reshape(-1) for x in xs])


def from_vector(vector: torch.Tensor, like: Flat) -> Flat:
    """Split ``vector`` into tensors shaped like ``like``."""
    out, start = [], 0
    for x in like:
        out.append(vector[start : start + x.numel()].reshape(x.shape))
        start += x.numel()
    return out


def check_same_dtype(xs: Flat, name: str) -> torch.dtype:
    """Return the common floating dtype of ``xs``; raise ``TypeError`` otherwise."""
    dtypes = {x.dtype for x in xs}
    if len(dtypes) > 1:
        raise TypeError(f"{name}: all leaves must share one dtype, got {sorted(map(str, dtypes))}")
    dtype = next(iter(dtypes))
    if not (dtype.is_floating_point or dtype.is_complex):
        raise TypeError(f"{name}: leaves must be floating point or complex, got {dtype}")
    return dtype
