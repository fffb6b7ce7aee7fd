"""Lion: the sign of an interpolated momentum (Chen et al., 2023)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from optiquant._typing import OptState, Params, Updates
from optiquant.optim._validate import check_beta
from optiquant.optim.base import GradientTransformation
from optiquant.optim.transform._ops import ListOps, Selection, use_foreach
from optiquant.tree import check_tensor_leaves, tree_zeros_like

__all__ = ["ScaleByLionState", "scale_by_lion"]


class ScaleByLionState(NamedTuple):
    """Lion's momentum."""

    mu: Updates


def scale_by_lion(
    b1: float | torch.Tensor = 0.9,
    b2: float | torch.Tensor = 0.99,
    *,
    moment_requires_grad: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Replace updates by ``sign(b1 * m + (1 - b1) * g)`` and track ``m = b2 * m + (1 - b2) * g``.

    >>> import torch
    >>> tx = scale_by_lion()
    >>> tx.update(torch.tensor([0.3, -2.0]), tx.init(torch.zeros(2)))[0]
    tensor([ 1., -1.])
    """
    check_beta(b1, "b1")
    check_beta(b2, "b2")

    def init(params: Params) -> OptState:
        check_tensor_leaves(params, "params")
        return ScaleByLionState(mu=tree_zeros_like(params, requires_grad=moment_requires_grad))

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        del params, extra_args
        sel = Selection(updates, [state.mu], ["mu"])
        ops = ListOps(inplace=inplace, foreach=use_foreach(foreach, b1, b2))
        gs = sel.updates
        mus = sel.state(0)
        direction = ops.sign(ops.lerp(ops.copy_new(mus), gs, 1.0 - b1))
        mus = ops.lerp(mus, gs, 1.0 - b2)
        new_updates = sel.updates_tree(direction)
        return new_updates, (state if inplace else ScaleByLionState(mu=sel.state_tree(0, mus)))

    return GradientTransformation(init, update)
