"""Second-moment rescalings: RMS (RMSprop), centred RMS and root-sum-of-squares (Adagrad)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from optiquant._typing import OptState, Params, Updates
from optiquant.optim._validate import check_beta, check_non_negative, check_positive
from optiquant.optim.base import GradientTransformation
from optiquant.optim.transform._ops import ListOps, Selection, use_foreach
from optiquant.tree import check_tensor_leaves, tree_map, tree_zeros_like

__all__ = [
    "ScaleByRStdDevState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_stddev",
]


def _filled(params: Params, value: float) -> Any:
    return tree_map(
        lambda p: torch.full_like(p, value, memory_format=torch.preserve_format), params
    )


class ScaleByRmsState(NamedTuple):
    """Exponential moving average of squared updates."""

    nu: Updates


def scale_by_rms(
    alpha: float | torch.Tensor = 0.9,
    eps: float | torch.Tensor = 1e-8,
    initial_scale: float = 0.0,
    *,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Divide updates by ``sqrt(EMA(g^2)) + eps`` (RMSprop; ``eps`` outside the root as in torch).

    >>> import torch
    >>> tx = scale_by_rms(alpha=0.0, eps=0.0 + 1e-12)
    >>> u, _ = tx.update(torch.tensor([-4.0]), tx.init(torch.zeros(1)))
    >>> torch.allclose(u, torch.tensor([-1.0]))
    True
    """
    check_beta(alpha, "alpha")
    check_positive(eps, "eps")
    check_non_negative(initial_scale, "initial_scale")

    def init(params: Params) -> OptState:
        check_tensor_leaves(params, "params")
        return ScaleByRmsState(nu=_filled(params, initial_scale))

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        del params, extra_args
        sel = Selection(updates, [state.nu], ["nu"])
        ops = ListOps(inplace=inplace, foreach=use_foreach(foreach, alpha, eps))
        gs = sel.updates
        nus = ops.ema_square(sel.state(0), gs, alpha)
        denom = ops.add_scalar(ops.sqrt_new(nus), eps)
        out = ops.div(gs, denom)
        new_updates = sel.updates_tree(out)
        return new_updates, (state if inplace else ScaleByRmsState(nu=sel.state_tree(0, nus)))

    return GradientTransformation(init, update)


class ScaleByRStdDevState(NamedTuple):
    """Moving averages of updates and of squared updates."""

    mu: Updates
    nu: Updates


def scale_by_stddev(
    alpha: float | torch.Tensor = 0.9,
    eps: float | torch.Tensor = 1e-8,
    initial_scale: float = 0.0,
    *,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Divide updates by their moving standard deviation plus ``eps`` (centred RMSprop).

    >>> import torch
    >>> tx = scale_by_stddev(alpha=0.5)
    >>> u, _ = tx.update(torch.tensor([2.0]), tx.init(torch.zeros(1)))
    >>> torch.allclose(u, torch.tensor([2.0]))
    True
    """
    check_beta(alpha, "alpha")
    check_positive(eps, "eps")
    check_non_negative(initial_scale, "initial_scale")

    def init(params: Params) -> OptState:
        check_tensor_leaves(params, "params")
        return ScaleByRStdDevState(mu=tree_zeros_like(params), nu=_filled(params, initial_scale))

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        del params, extra_args
        sel = Selection(updates, [state.mu, state.nu], ["mu", "nu"])
        ops = ListOps(inplace=inplace, foreach=use_foreach(foreach, alpha, eps))
        gs = sel.updates
        mus = ops.lerp(sel.state(0), gs, 1.0 - alpha)
        nus = ops.ema_square(sel.state(1), gs, alpha)
        variance = ops.addcmul(ops.copy_new(nus), mus, mus, -1.0)
        denom = ops.add_scalar(ops.sqrt_new(variance), eps)
        out = ops.div(gs, denom)
        new_updates = sel.updates_tree(out)
        if inplace:
            return new_updates, state
        return new_updates, ScaleByRStdDevState(
            mu=sel.state_tree(0, mus), nu=sel.state_tree(1, nus)
        )

    return GradientTransformation(init, update)


class ScaleByRssState(NamedTuple):
    """Running sum of squared updates."""

    sum_of_squares: Updates


def scale_by_rss(
    initial_accumulator_value: float = 0.0,
    eps: float | torch.Tensor = 1e-10,
    *,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Divide updates by ``sqrt(sum g^2) + eps`` (Adagrad).

    >>> import torch
    >>> tx = scale_by_rss()
    >>> u, _ = tx.update(torch.tensor([3.0]), tx.init(torch.zeros(1)))
    >>> torch.allclose(u, torch.tensor([1.0]))
    True
    """
    check_non_negative(initial_accumulator_value, "initial_accumulator_value")
    check_positive(eps, "eps")

    def init(params: Params) -> OptState:
        check_tensor_leaves(params, "params")
        return ScaleByRssState(sum_of_squares=_filled(params, initial_accumulator_value))

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        del params, extra_args
        sel = Selection(updates, [state.sum_of_squares], ["sum_of_squares"])
        ops = ListOps(inplace=inplace, foreach=use_foreach(foreach, eps))
        gs = sel.updates
        sums = ops.addcmul(sel.state(0), gs, gs, 1.0)
        denom = ops.add_scalar(ops.sqrt_new(sums), eps)
        out = ops.div(gs, denom)
        new_updates = sel.updates_tree(out)
        if inplace:
            return new_updates, state
        return new_updates, ScaleByRssState(sum_of_squares=sel.state_tree(0, sums))

    return GradientTransformation(init, update)
