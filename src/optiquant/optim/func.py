"""A functional optimizer object: ``new_params = opt.step(loss, params)``."""

from __future__ import annotations

from typing import Any

import torch

from optiquant._typing import Params
from optiquant.optim.base import GradientTransformation
from optiquant.optim.update import apply_updates
from optiquant.tree import check_tensor_leaves, tree_flatten, tree_unflatten

__all__ = ["FuncOptimizer"]


class FuncOptimizer:
    """Steps a pytree of tensors given a loss; differentiable by default.

    With ``inplace=False`` the returned parameters are functions of the old ones (autograd
    can go through many steps); with ``inplace=True`` the tensors are updated in place.

    >>> import torch, optiquant as oq
    >>> w = torch.tensor([1.0], requires_grad=True)
    >>> opt = oq.FuncOptimizer(oq.sgd(lr=0.5))
    >>> new_w = opt.step((w**2).sum(), w)
    >>> new_w
    tensor([0.], grad_fn=<AddBackward0>)
    """

    def __init__(self, transformation: GradientTransformation, *, inplace: bool = False) -> None:
        if not isinstance(transformation, GradientTransformation):
            raise TypeError(
                "transformation must be a GradientTransformation, got "
                f"{type(transformation).__name__}"
            )
        self.transformation = transformation
        self.inplace = inplace
        self.optim_state: Any = None

    def step(self, loss: torch.Tensor, params: Params, inplace: bool | None = None) -> Params:
        """Differentiate ``loss`` w.r.t. ``params`` and return the updated parameters."""
        inplace = self.inplace if inplace is None else inplace
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(
                f"loss must be a scalar tensor, got {getattr(loss, 'shape', type(loss))}"
            )
        check_tensor_leaves(params, "params")
        leaves, spec = tree_flatten(params)
        wanted = [i for i, p in enumerate(leaves) if p is not None and p.requires_grad]
        if not wanted:
            raise ValueError("params: no tensor requires grad, so there is nothing to optimize")
        grads = torch.autograd.grad(
            loss, [leaves[i] for i in wanted], create_graph=not inplace, allow_unused=True
        )
        grad_leaves: list[Any] = [None] * len(leaves)
        for i, g in zip(wanted, grads):
            grad_leaves[i] = g
        grad_tree = tree_unflatten(spec, grad_leaves)
        if self.optim_state is None:
            self.optim_state = self.transformation.init(params)
        updates, self.optim_state = self.transformation.update(
            grad_tree, self.optim_state, params, inplace=inplace
        )
        return apply_updates(params, updates, inplace=inplace)

    def state_dict(self) -> Any:
        """The optimizer state (a tree of tensors)."""
        return self.optim_state

    def load_state_dict(self, state: Any) -> None:
        """Replace the optimizer state."""
        self.optim_state = state
