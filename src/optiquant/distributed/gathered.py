"""Run any transformation on whole tensors when the parameters are sharded DTensors.

Element-wise optimizers (Adam, SGD, ...) run directly on FSDP2's sharded parameters.
Transformations that look at a whole tensor at once (PSGD's Kron preconditioner, which
multiplies matrices along every dimension) cannot work on a shard. :func:`gathered`
wraps such a transformation: every DTensor is all-gathered into a whole tensor, the
transformation runs on whole tensors (the same computation on every rank, so every rank
gets the same answer as a single process), and each rank keeps its own shard of the
result. It trades memory and repeated work for exactness; :class:`DistributedKron`
divides the preconditioner work between ranks instead.
"""

from __future__ import annotations

from typing import Any

import torch

from optiquant._typing import OptState, Params, Updates
from optiquant.distributed._shards import full_like_local, is_dtensor
from optiquant.optim.base import GradientTransformation
from optiquant.tree import tree_flatten, tree_unflatten

__all__ = ["gathered"]


def _whole(leaf: Any) -> Any:
    return leaf.full_tensor() if is_dtensor(leaf) else leaf


def _whole_tree(tree: Any) -> Any:
    leaves, spec = tree_flatten(tree)
    return tree_unflatten(spec, [_whole(leaf) for leaf in leaves])


def gathered(transformation: GradientTransformation) -> GradientTransformation:
    """``transformation`` applied to whole tensors, with DTensor inputs and outputs.

    Plain tensors pass through unchanged, so the result is ``transformation`` itself
    when nothing is sharded. The state holds whole (replicated) tensors.

    >>> import torch, optiquant as oq
    >>> from optiquant.distributed import gathered
    >>> tx = gathered(oq.sgd(lr=0.5))
    >>> w = torch.tensor([1.0, 2.0])
    >>> tx.update(torch.tensor([1.0, 1.0]), tx.init(w), w)[0]
    tensor([-0.5000, -0.5000])
    """
    if not isinstance(transformation, GradientTransformation):
        raise TypeError(
            f"transformation: expected a GradientTransformation, got "
            f"{type(transformation).__name__}"
        )
    inner = transformation

    def init(params: Params) -> OptState:
        return inner.init(_whole_tree(params))

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        u_leaves, spec = tree_flatten(updates)
        whole = tree_unflatten(spec, [_whole(u) for u in u_leaves])
        whole_params = None if params is None else _whole_tree(params)
        extra = {
            k: _whole_tree(v) if isinstance(v, (torch.Tensor, dict, list, tuple)) else v
            for k, v in extra_args.items()
        }
        new, new_state = inner.update(whole, state, whole_params, inplace=inplace, **extra)
        out_leaves, out_spec = tree_flatten(new)
        if out_spec != spec:
            raise ValueError("transformation: returned updates with a different structure")
        out = [
            full_like_local(o, u) if (o is not None and is_dtensor(u)) else o
            for o, u in zip(out_leaves, u_leaves)
        ]
        return tree_unflatten(spec, out), new_state

    return GradientTransformation(init, update)
