"""Adam-family preconditioners: Adam (with AMSGrad and Nesterov), Adamax, RAdam, NAdam."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from optiquant._typing import OptState, Params, Updates
from optiquant.optim._validate import check_beta, check_non_negative, check_positive
from optiquant.optim.base import GradientTransformation
from optiquant.optim.transform._adam_autograd import adam_direction
from optiquant.optim.transform._ops import ListOps, Selection, new_counts, use_foreach
from optiquant.tree import check_tensor_leaves, tree_map, tree_zeros_like

__all__ = [
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByNadamState",
    "init_counts",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_nadam",
    "scale_by_radam",
]


def init_counts(params: Params) -> Any:
    """Per-parameter step counters (0-d float32 CPU tensors), ``None`` for frozen leaves.

    >>> import torch
    >>> init_counts({"w": torch.ones(3), "frozen": None})
    {'w': tensor(0.), 'frozen': None}
    """
    return tree_map(lambda p: torch.zeros((), dtype=torch.float32), params)


def _sqrt(x: Any) -> Any:
    return math.sqrt(x) if isinstance(x, float) else torch.sqrt(x)


class ScaleByAdamState(NamedTuple):
    """First and second moments, the AMSGrad maximum (empty unless used) and step counts."""

    mu: Updates
    nu: Updates
    nu_max: Any
    count: Any


def _adam_denominator(
    ops: ListOps, second: list[torch.Tensor], bc2: list[Any], eps: Any, eps_root: float
) -> list[torch.Tensor]:
    """``sqrt(second / bc2 + eps_root) + eps`` as new tensors."""
    if eps_root == 0.0:
        denom = ops.sqrt_new(second)
        denom = ops.div_scalar(denom, [_sqrt(b) for b in bc2])
    else:
        scaled = [s / b for s, b in zip(second, bc2)]
        denom = ops.sqrt_new(ops.add_scalar(scaled, eps_root))
    return ops.add_scalar(denom, eps)


def scale_by_adam(
    b1: float | torch.Tensor = 0.9,
    b2: float | torch.Tensor = 0.999,
    eps: float | torch.Tensor = 1e-8,
    eps_root: float = 0.0,
    *,
    moment_requires_grad: bool = False,
    nesterov: bool = False,
    amsgrad: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Rescale updates by Adam's bias-corrected moment ratio.

    ``u = m_hat / (sqrt(v_hat + eps_root) + eps)``; with ``nesterov`` the first moment is
    looked ahead one step (NAdam in optax's form); with ``amsgrad`` the running maximum of
    ``v`` is used. In differentiable mode the square root has a finite derivative at 0,
    so meta-gradients stay finite when some gradients are exactly zero.

    >>> import torch
    >>> tx = scale_by_adam()
    >>> u, _ = tx.update(torch.tensor([3.0, -2.0]), tx.init(torch.zeros(2)))
    >>> torch.allclose(u, torch.tensor([1.0, -1.0]))
    True
    """
    check_beta(b1, "b1")
    check_beta(b2, "b2")
    check_positive(eps, "eps")
    check_non_negative(eps_root, "eps_root")

    def init(params: Params) -> OptState:
        check_tensor_leaves(params, "params")
        return ScaleByAdamState(
            mu=tree_zeros_like(params, requires_grad=moment_requires_grad),
            nu=tree_zeros_like(params, requires_grad=moment_requires_grad),
            nu_max=tree_zeros_like(params) if amsgrad else (),
            count=init_counts(params),
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
        trees, names = [state.mu, state.nu, state.count], ["mu", "nu", "count"]
        if amsgrad:
            trees.append(state.nu_max)
            names.append("nu_max")
        sel = Selection(updates, trees, names)
        gs = sel.updates
        ops = ListOps(inplace=inplace, foreach=use_foreach(foreach, b1, b2, eps))
        counts, steps = new_counts(sel.state(2), inplace)
        bc1 = [1.0 - b1**t for t in steps]
        bc2 = [1.0 - b2**t for t in steps]
        if not inplace and ops.foreach and not amsgrad and not nesterov and gs:
            mus, nus, out = adam_direction(
                gs,
                sel.state(0),
                sel.state(1),
                b1=float(b1),
                b2=float(b2),
                eps=float(eps),
                eps_root=eps_root,
                bc1=[float(b) for b in bc1],
                bc2=[float(b) for b in bc2],
            )
            return sel.updates_tree(out), ScaleByAdamState(
                mu=sel.state_tree(0, mus),
                nu=sel.state_tree(1, nus),
                nu_max=(),
                count=sel.state_tree(2, counts),
            )
        mus = ops.lerp(sel.state(0), gs, 1.0 - b1)
        nus = ops.ema_square(sel.state(1), gs, b2)
        second = nus
        if amsgrad:
            second = ops.maximum(sel.state(3), nus)
        denom = _adam_denominator(ops, second, bc2, eps, eps_root)
        if nesterov:
            bc1_next = [1.0 - b1 ** (t + 1.0) for t in steps]
            look = ops.mul_new(mus, [b1 / b for b in bc1_next])
            direction = ops.add(look, gs, [(1.0 - b1) / b for b in bc1])
            out = ops.div(direction, denom)
        else:
            out = ops.div_new(mus, ops.mul(denom, bc1))
        new_updates = sel.updates_tree(out)
        if inplace:
            return new_updates, state
        return new_updates, ScaleByAdamState(
            mu=sel.state_tree(0, mus),
            nu=sel.state_tree(1, nus),
            nu_max=sel.state_tree(3, second) if amsgrad else (),
            count=sel.state_tree(2, counts),
        )

    return GradientTransformation(init, update)


class ScaleByAdamaxState(NamedTuple):
    """First moment, exponentially weighted infinity norm and step counts."""

    mu: Updates
    nu: Updates
    count: Any


def scale_by_adamax(
    b1: float | torch.Tensor = 0.9,
    b2: float | torch.Tensor = 0.999,
    eps: float | torch.Tensor = 1e-8,
    *,
    moment_requires_grad: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Rescale updates by Adamax: ``m_hat / max(b2 * n, |g| + eps)``.

    >>> import torch
    >>> tx = scale_by_adamax()
    >>> u, _ = tx.update(torch.tensor([2.0]), tx.init(torch.zeros(1)))
    >>> torch.allclose(u, torch.tensor([1.0]))
    True
    """
    check_beta(b1, "b1")
    check_beta(b2, "b2")
    check_positive(eps, "eps")

    def init(params: Params) -> OptState:
        check_tensor_leaves(params, "params")
        return ScaleByAdamaxState(
            mu=tree_zeros_like(params, requires_grad=moment_requires_grad),
            nu=tree_zeros_like(params, requires_grad=moment_requires_grad),
            count=init_counts(params),
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
        sel = Selection(updates, [state.mu, state.nu, state.count], ["mu", "nu", "count"])
        gs = sel.updates
        ops = ListOps(inplace=inplace, foreach=use_foreach(foreach, b1, b2, eps))
        counts, steps = new_counts(sel.state(2), inplace)
        mus = ops.lerp(sel.state(0), gs, 1.0 - b1)
        norm = ops.add_scalar(ops.abs(gs), eps)
        nus = ops.maximum(ops.mul(sel.state(1), b2), norm)
        out = ops.div_new(mus, ops.mul_new(nus, [1.0 - b1**t for t in steps]))
        new_updates = sel.updates_tree(out)
        if inplace:
            return new_updates, state
        return new_updates, ScaleByAdamaxState(
            mu=sel.state_tree(0, mus), nu=sel.state_tree(1, nus), count=sel.state_tree(2, counts)
        )

    return GradientTransformation(init, update)


def scale_by_radam(
    b1: float | torch.Tensor = 0.9,
    b2: float | torch.Tensor = 0.999,
    eps: float | torch.Tensor = 1e-8,
    *,
    moment_requires_grad: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Rescale updates by rectified Adam (RAdam).

    While the variance rectification term is undefined (``rho_t <= 5``) the update is the
    bias-corrected momentum; afterwards it is Adam's ratio times the rectification.

    >>> import torch
    >>> tx = scale_by_radam()
    >>> u, _ = tx.update(torch.tensor([2.0]), tx.init(torch.zeros(1)))
    >>> torch.allclose(u, torch.tensor([2.0]))
    True
    """
    check_beta(b1, "b1")
    check_beta(b2, "b2")
    check_positive(eps, "eps")

    def init(params: Params) -> OptState:
        check_tensor_leaves(params, "params")
        return ScaleByAdamState(
            mu=tree_zeros_like(params, requires_grad=moment_requires_grad),
            nu=tree_zeros_like(params, requires_grad=moment_requires_grad),
            nu_max=(),
            count=init_counts(params),
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
        sel = Selection(updates, [state.mu, state.nu, state.count], ["mu", "nu", "count"])
        gs = sel.updates
        ops = ListOps(inplace=inplace, foreach=use_foreach(foreach, b1, b2, eps))
        counts, steps = new_counts(sel.state(2), inplace)
        mus = ops.lerp(sel.state(0), gs, 1.0 - b1)
        nus = ops.ema_square(sel.state(1), gs, b2)
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        out = []
        for m, v, t in zip(mus, nus, steps):
            bc1 = 1.0 - b1**t
            bc2 = 1.0 - b2**t
            rho_t = rho_inf - 2.0 * t * (b2**t) / bc2
            if float(rho_t) > 5.0:
                rect = _sqrt(
                    (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
                )
                root = (
                    torch.sqrt(v)
                    if inplace
                    else ListOps(inplace=False, foreach=False).sqrt_new([v])[0]
                )
                out.append(m * (rect * _sqrt(bc2) / bc1) / (root + eps))
            else:
                out.append(m / bc1)
        new_updates = sel.updates_tree(out)
        if inplace:
            return new_updates, state
        return new_updates, ScaleByAdamState(
            mu=sel.state_tree(0, mus),
            nu=sel.state_tree(1, nus),
            nu_max=(),
            count=sel.state_tree(2, counts),
        )

    return GradientTransformation(init, update)


class ScaleByNadamState(NamedTuple):
    """NAdam's moments, step counts and the running product of momentum coefficients."""

    mu: Updates
    nu: Updates
    count: Any
    mu_product: Any


def scale_by_nadam(
    b1: float | torch.Tensor = 0.9,
    b2: float | torch.Tensor = 0.999,
    eps: float | torch.Tensor = 1e-8,
    momentum_decay: float = 4e-3,
    *,
    moment_requires_grad: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Rescale updates by NAdam with momentum decay (Dozat 2016, as in ``torch.optim.NAdam``).

    ``mu_t = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))``; the update mixes the current
    gradient and the momentum, each divided by ``sqrt(v / bc2) + eps``.

    >>> import torch
    >>> tx = scale_by_nadam()
    >>> u, _ = tx.update(torch.tensor([1.0]), tx.init(torch.zeros(1)))
    >>> bool(u > 0)
    True
    """
    check_beta(b1, "b1")
    check_beta(b2, "b2")
    check_positive(eps, "eps")
    check_non_negative(momentum_decay, "momentum_decay")

    def init(params: Params) -> OptState:
        check_tensor_leaves(params, "params")
        return ScaleByNadamState(
            mu=tree_zeros_like(params, requires_grad=moment_requires_grad),
            nu=tree_zeros_like(params, requires_grad=moment_requires_grad),
            count=init_counts(params),
            mu_product=tree_map(lambda p: torch.ones((), dtype=torch.float64), params),
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
        sel = Selection(
            updates,
            [state.mu, state.nu, state.count, state.mu_product],
            ["mu", "nu", "count", "mu_product"],
        )
        gs = sel.updates
        ops = ListOps(inplace=inplace, foreach=use_foreach(foreach, b1, b2, eps))
        counts, steps = new_counts(sel.state(2), inplace)
        mu_now = [b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay)) for t in steps]
        mu_next = [b1 * (1.0 - 0.5 * 0.96 ** ((t + 1.0) * momentum_decay)) for t in steps]
        old_products = sel.state(3)
        products = [
            float(p) * m if isinstance(m, float) else p * m for p, m in zip(old_products, mu_now)
        ]
        mus = ops.lerp(sel.state(0), gs, 1.0 - b1)
        nus = ops.ema_square(sel.state(1), gs, b2)
        scaled = [v / (1.0 - b2**t) for v, t in zip(nus, steps)]
        denom = ops.add_scalar(ops.sqrt_new(scaled), eps)
        grad_coef = [(1.0 - m) / (1.0 - p) for m, p in zip(mu_now, products)]
        mom_coef = [mn / (1.0 - p * mn) for mn, p in zip(mu_next, products)]
        out = ops.add(ops.mul_new(gs, grad_coef), ops.mul_new(mus, mom_coef))
        out = ops.div(out, denom)
        new_updates = sel.updates_tree(out)
        if inplace:
            for buf, p in zip(old_products, products):
                buf.fill_(float(p))
            return new_updates, state
        new_products = [
            torch.as_tensor(p, dtype=torch.float64) if isinstance(p, float) else p for p in products
        ]
        return new_updates, ScaleByNadamState(
            mu=sel.state_tree(0, mus),
            nu=sel.state_tree(1, nus),
            count=sel.state_tree(2, counts),
            mu_product=sel.state_tree(3, new_products),
        )

    return GradientTransformation(init, update)
