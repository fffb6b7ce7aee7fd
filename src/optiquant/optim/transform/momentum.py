"""Momentum (``trace``) with dampening and Nesterov, first-step flag kept in the state."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from optiquant._typing import OptState, Params, Updates
from optiquant.optim._validate import check_bool, check_non_negative
from optiquant.optim.base import GradientTransformation, identity
from optiquant.optim.transform._ops import ListOps, Selection, new_counts, use_foreach
from optiquant.optim.transform.adam import init_counts
from optiquant.tree import check_tensor_leaves, tree_zeros_like

__all__ = ["TraceState", "trace"]


class TraceState(NamedTuple):
    """The momentum buffer and, when dampening is used, per-parameter step counts."""

    trace: Updates
    count: Any


def trace(
    momentum: float | torch.Tensor = 0.9,
    dampening: float = 0.0,
    nesterov: bool = False,
    *,
    moment_requires_grad: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Heavy-ball momentum as in ``torch.optim.SGD``.

    First step ``b = g``; later ``b = momentum * b + (1 - dampening) * g``. The update is
    ``g + momentum * b`` with ``nesterov`` and ``b`` otherwise. ``momentum=0`` is the
    identity.

    >>> import torch
    >>> tx = trace(momentum=0.5)
    >>> state = tx.init(torch.zeros(1))
    >>> u, state = tx.update(torch.ones(1), state)
    >>> tx.update(torch.ones(1), state)[0]
    tensor([1.5000])
    """
    check_non_negative(momentum, "momentum")
    check_non_negative(dampening, "dampening")
    check_bool(nesterov, "nesterov")
    if nesterov and ((isinstance(momentum, (int, float)) and momentum <= 0) or dampening != 0):
        raise ValueError(
            "nesterov momentum requires momentum > 0 and dampening == 0, got "
            f"momentum={momentum!r}, "
            f"dampening={dampening!r}"
        )
    if isinstance(momentum, (int, float)) and momentum == 0:
        return identity()
    track_first = dampening != 0

    def init(params: Params) -> OptState:
        check_tensor_leaves(params, "params")
        return TraceState(
            trace=tree_zeros_like(params, requires_grad=moment_requires_grad),
            count=init_counts(params) if track_first else (),
        )

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        del params, extra_args
        trees = [state.trace, state.count] if track_first else [state.trace]
        sel = Selection(updates, trees, ["trace", "count"][: len(trees)])
        ops = ListOps(inplace=inplace, foreach=use_foreach(foreach, momentum))
        gs = sel.updates
        bufs = sel.state(0)
        counts: list[torch.Tensor] = []
        if track_first:
            counts, steps = new_counts(sel.state(1), inplace)
            weights = [1.0 if t == 1.0 else 1.0 - dampening for t in steps]
            bufs = ops.add(
                ops.mul(bufs, [0.0 if t == 1.0 else momentum for t in steps]), gs, weights
            )
        else:
            bufs = ops.add(ops.mul(bufs, momentum), gs)
        out = ops.add(gs, bufs, momentum) if nesterov else ops.assign(gs, bufs)
        new_updates = sel.updates_tree(out)
        if inplace:
            return new_updates, state
        return new_updates, TraceState(
            trace=sel.state_tree(0, bufs), count=sel.state_tree(1, counts) if track_first else ()
        )

    return GradientTransformation(init, update)
