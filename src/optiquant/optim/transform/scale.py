"""Scaling transformations: by a constant, by a schedule, by -1."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from optiquant._typing import OptState, Params, Schedule, Updates
from optiquant.optim._validate import is_schedule
from optiquant.optim.base import EmptyState, GradientTransformation
from optiquant.optim.transform._ops import ListOps, Selection, use_foreach

__all__ = ["ScaleByScheduleState", "flip_sign", "scale", "scale_by_schedule"]


def _scale_leaves(updates: Updates, factor: Any, inplace: bool, foreach: bool | None) -> Updates:
    sel = Selection(updates, (), ())
    ops = ListOps(inplace=inplace, foreach=use_foreach(foreach, factor))
    return sel.updates_tree(ops.mul(sel.updates, factor))


def scale(
    step_size: float | torch.Tensor, *, foreach: bool | None = None
) -> GradientTransformation:
    """Multiply updates by ``step_size`` (a number or a tensor, which may require grad).

    >>> import torch
    >>> tx = scale(-0.5)
    >>> tx.update(torch.tensor([2.0]), tx.init(torch.tensor([0.0])))[0]
    tensor([-1.])
    """
    if not isinstance(step_size, (int, float, torch.Tensor)) or isinstance(step_size, bool):
        raise TypeError(f"step_size must be a number or a tensor, got {type(step_size).__name__}")

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
        del params, extra_args
        return _scale_leaves(updates, step_size, inplace, foreach), state

    return GradientTransformation(init, update)


class ScaleByScheduleState(NamedTuple):
    """Step counter of :func:`scale_by_schedule` (number of updates so far)."""

    count: torch.Tensor  # type: ignore[assignment]


def scale_by_schedule(
    step_size_fn: Schedule, *, foreach: bool | None = None
) -> GradientTransformation:
    """Multiply updates by ``step_size_fn(count)``; ``count`` starts at 0.

    >>> import torch
    >>> tx = scale_by_schedule(lambda count: 1.0 / (count + 1))
    >>> state = tx.init(torch.zeros(1))
    >>> _, state = tx.update(torch.ones(1), state)
    >>> tx.update(torch.ones(1), state)[0]
    tensor([0.5000])
    """
    if not is_schedule(step_size_fn):
        raise TypeError(f"step_size_fn must be callable, got {type(step_size_fn).__name__}")

    def init(params: Params) -> OptState:
        del params
        return ScaleByScheduleState(count=torch.zeros((), dtype=torch.int64))

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        del params, extra_args
        factor = step_size_fn(int(state.count))
        updates = _scale_leaves(updates, factor, inplace, foreach)
        if inplace:
            state.count.add_(1)
            return updates, state
        return updates, ScaleByScheduleState(count=state.count + 1)

    return GradientTransformation(init, update)


def flip_sign(*, foreach: bool | None = None) -> GradientTransformation:
    """Negate the updates (turns a descent transformation into ascent: ``maximize``).

    >>> import torch
    >>> tx = flip_sign()
    >>> tx.update(torch.tensor([1.0]), tx.init(torch.tensor([0.0])))[0]
    tensor([-1.])
    """

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
        del params, extra_args
        sel = Selection(updates, (), ())
        ops = ListOps(inplace=inplace, foreach=use_foreach(foreach))
        return sel.updates_tree(ops.neg(sel.updates)), state

    return GradientTransformation(init, update)
