"""Ready-made optimizers: chains of transformations with torch.optim's options and defaults.

Each alias returns a :class:`~optiquant.optim.base.GradientTransformation` whose updates
are to be added to the parameters (``apply_updates``). ``lr`` may be a number, a schedule
(a callable of the step count) or a tensor (which may require grad, to meta-learn it).
Defaults follow ``torch.optim`` so that a function and its class twin agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from optiquant._typing import OptState, Params, ScalarOrSchedule, Updates
from optiquant.optim import _direct, _fused
from optiquant.optim._validate import (
    check_beta,
    check_betas,
    check_bool,
    check_non_negative,
    check_positive,
    check_scalar_or_schedule,
    is_schedule,
)
from optiquant.optim.base import EmptyState, GradientTransformation, chain, identity
from optiquant.optim.transform import (
    add_decayed_weights,
    flip_sign,
    scale,
    scale_by_adam,
    scale_by_adamax,
    scale_by_lion,
    scale_by_nadam,
    scale_by_radam,
    scale_by_rms,
    scale_by_rss,
    scale_by_schedule,
    scale_by_stddev,
    trace,
)
from optiquant.optim.transform._adam_autograd import adam_direction
from optiquant.optim.transform._ops import Selection, new_counts
from optiquant.tree import tree_leaves

__all__ = ["adagrad", "adam", "adamax", "adamw", "lion", "nadam", "radam", "rmsprop", "sgd"]


def _neg_lr(lr: ScalarOrSchedule, foreach: bool | None) -> GradientTransformation:
    """The final ``-lr`` scaling (by a schedule of the step count when ``lr`` is callable)."""
    if is_schedule(lr):
        return scale_by_schedule(lambda count: -lr(count), foreach=foreach)  # type: ignore[operator]
    return scale(-lr, foreach=foreach)  # type: ignore[operator]


def _sign_and_decay(
    maximize: bool, weight_decay: Any, foreach: bool | None
) -> GradientTransformation:
    """``g -> (-g if maximize else g) + weight_decay * p``, torch.optim's coupled L2."""
    parts = []
    if maximize:
        parts.append(flip_sign(foreach=foreach))
    if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
        parts.append(add_decayed_weights(weight_decay, foreach=foreach))
    return _single(parts)


def _single(parts: list[GradientTransformation]) -> GradientTransformation:
    if not parts:
        return identity()
    if len(parts) == 1:
        return parts[0]
    inner = chain(*parts)

    def init(params: Params) -> OptState:
        del params
        return EmptyState()

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra: Any,
    ) -> tuple[Updates, OptState]:
        updates, _ = inner.update(
            updates, tuple(EmptyState() for _ in parts), params, inplace=inplace, **extra
        )
        return updates, state

    return GradientTransformation(init, update)


DirectStep = Callable[[list[torch.Tensor], list[torch.Tensor], Selection, OptState, float], None]


def _with_direct(
    generic: GradientTransformation,
    lr: Any,
    hyperparams: tuple[Any, ...],
    trees: Callable[[OptState], list[Any]],
    lr_index: int,
    maximize: bool,
    coupled_decay: Any,
    decoupled_decay: Any,
    run: DirectStep,
) -> GradientTransformation:
    """Give ``generic`` an ``apply_fused`` that steps the parameters directly (class path).

    ``trees(state)`` lists the per-parameter state trees that ``run`` reads; ``run`` gets
    the parameters, the signed and decayed gradients, the selection of state leaves, the
    state and the step's learning rate.
    """
    numbers = [_fused.as_float(x) for x in (*hyperparams, coupled_decay, decoupled_decay)]
    if None in numbers or not (is_schedule(lr) or _fused.as_float(lr) is not None):
        return generic
    coupled = float(coupled_decay)
    decoupled = float(decoupled_decay)

    def apply_fused(params: Params, grads: Updates, state: OptState) -> OptState | None:
        sel = Selection(grads, trees(state), [f"tree{k}" for k in range(len(trees(state)))])
        gs = sel.updates
        all_params = tree_leaves(params)
        ps = [all_params[i] for i in sel.indices]
        if not gs or not _fused.same_group(
            ps, gs, *(sel.state(k) for k in range(len(sel.state_leaves)))
        ):
            return None
        step_lr = float(lr(int(state[lr_index].count))) if is_schedule(lr) else float(lr)
        with torch.no_grad():
            if decoupled != 0.0:
                torch._foreach_mul_(ps, 1.0 - step_lr * decoupled)
            run(ps, _direct.signed_decayed(gs, ps, maximize, coupled), sel, state, step_lr)
        if is_schedule(lr):
            state[lr_index].count.add_(1)
        return state

    return GradientTransformation(generic.init, generic.update, apply_fused)


def _decay_split(
    maximize: bool, weight_decay: Any, decoupled: bool, foreach: bool | None, mask: Any = None
) -> tuple[GradientTransformation, GradientTransformation, Any, Any]:
    """The transformations before and after the preconditioner for ``weight_decay``.

    Coupled decay (torch.optim's L2) joins the sign flip before the preconditioner;
    decoupled decay is added after it. Also returns the (coupled, decoupled) amounts.
    """
    coupled_wd, decoupled_wd = (0.0, weight_decay) if decoupled else (weight_decay, 0.0)
    pre = _sign_and_decay(maximize, coupled_wd, foreach)
    post = add_decayed_weights(weight_decay, mask, foreach=foreach) if decoupled else identity()
    return pre, post, coupled_wd, decoupled_wd


def _check_common(lr: Any, eps: Any | None, weight_decay: Any) -> None:
    check_scalar_or_schedule(lr, "lr")
    if eps is not None:
        check_positive(eps, "eps")
    check_non_negative(weight_decay, "weight_decay")


def sgd(
    lr: ScalarOrSchedule,
    momentum: float | torch.Tensor = 0.0,
    dampening: float = 0.0,
    weight_decay: float | torch.Tensor = 0.0,
    nesterov: bool = False,
    *,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    >>> import torch, optiquant as oq
    >>> p = torch.tensor([1.0])
    >>> tx = oq.sgd(lr=0.1)
    >>> tx.update(torch.tensor([2.0]), tx.init(p), p)[0]
    tensor([-0.2000])
    """
    _check_common(lr, None, weight_decay)
    check_non_negative(momentum, "momentum")
    check_bool(maximize, "maximize")
    generic = chain(
        _sign_and_decay(maximize, weight_decay, foreach),
        trace(
            momentum,
            dampening,
            nesterov,
            moment_requires_grad=moment_requires_grad,
            foreach=foreach,
        ),
        _neg_lr(lr, foreach),
    )
    numbers = [_fused.as_float(x) for x in (momentum, dampening, weight_decay)]
    if (
        foreach is False
        or None in numbers
        or not (is_schedule(lr) or _fused.as_float(lr) is not None)
    ):
        return generic
    f_momentum, f_dampening, f_wd = (float(x) for x in numbers)  # type: ignore[arg-type]

    def apply_fused(params: Params, grads: Updates, state: OptState) -> OptState | None:
        has_buffer = f_momentum != 0.0
        trees = [state[1].trace] if has_buffer else []
        track_first = has_buffer and f_dampening != 0.0
        if track_first:
            trees.append(state[1].count)
        sel = Selection(grads, trees, ["trace", "count"][: len(trees)])
        gs = sel.updates
        all_params = tree_leaves(params)
        ps = [all_params[i] for i in sel.indices]
        bufs = sel.state(0) if has_buffer else []
        if (
            not gs
            or not _fused.can_fuse(ps, gs, *([bufs] if bufs else []))
            or _fused.has_dtensor(ps)
        ):
            return None
        first = False
        if track_first:
            counts = sel.state(1)
            values = {float(c) for c in counts}
            if len(values) != 1:
                return None
            first = values == {0.0}
            torch._foreach_add_(counts, 1.0)
        step_lr = float(lr(int(state[2].count))) if is_schedule(lr) else float(lr)  # type: ignore[operator,arg-type]
        with torch.no_grad():
            torch._fused_sgd_(
                ps,
                gs,
                bufs,
                weight_decay=f_wd,
                momentum=f_momentum,
                lr=step_lr,
                dampening=f_dampening,
                nesterov=nesterov,
                maximize=maximize,
                is_first_step=first,
                grad_scale=None,
                found_inf=None,
            )
        if is_schedule(lr):
            state[2].count.add_(1)
        return state

    return GradientTransformation(generic.init, generic.update, apply_fused)


def _adam_like(
    lr: ScalarOrSchedule,
    betas: tuple[Any, Any],
    eps: Any,
    weight_decay: Any,
    *,
    decoupled: bool,
    eps_root: float,
    mask: Any,
    moment_requires_grad: bool,
    maximize: bool,
    amsgrad: bool,
    nesterov: bool,
    foreach: bool | None,
) -> GradientTransformation:
    _check_common(lr, eps, weight_decay)
    b1, b2 = check_betas(betas)
    check_bool(maximize, "maximize")
    check_bool(amsgrad, "amsgrad")
    pre, post, _, _ = _decay_split(maximize, weight_decay, decoupled, foreach, mask)
    core = scale_by_adam(
        b1,
        b2,
        eps,
        eps_root,
        moment_requires_grad=moment_requires_grad,
        nesterov=nesterov,
        amsgrad=amsgrad,
        foreach=foreach,
    )
    generic = chain(pre, core, post, _neg_lr(lr, foreach))
    numbers = [_fused.as_float(x) for x in (b1, b2, eps, weight_decay)]
    one_node = (
        foreach is not False
        and None not in numbers
        and _fused.as_float(lr) is not None
        and not nesterov
        and not amsgrad
        and not (decoupled and numbers[3] != 0.0)
    )

    def differentiable_update(
        updates: Updates, state: OptState, params: Params | None, extra: dict[str, Any]
    ) -> tuple[Updates, OptState]:
        """Adam and the ``-lr`` scaling as one autograd node (see ``_adam_autograd``)."""
        updates, pre_state = pre.update(updates, state[0], params, inplace=False, **extra)
        adam_state = state[1]
        sel = Selection(
            updates, [adam_state.mu, adam_state.nu, adam_state.count], ["mu", "nu", "count"]
        )
        if not sel.indices:
            return updates, state
        counts, steps = new_counts(sel.state(2), inplace=False)
        fb1, fb2 = float(b1), float(b2)  # type: ignore[arg-type]
        mus, nus, out = adam_direction(
            sel.updates,
            sel.state(0),
            sel.state(1),
            b1=fb1,
            b2=fb2,
            eps=float(eps),  # type: ignore[arg-type]
            eps_root=eps_root,
            bc1=[1.0 - fb1**t for t in steps],
            bc2=[1.0 - fb2**t for t in steps],
            step_size=-float(lr),  # type: ignore[arg-type]
        )
        new_adam = adam_state._replace(
            mu=sel.state_tree(0, mus), nu=sel.state_tree(1, nus), count=sel.state_tree(2, counts)
        )
        return sel.updates_tree(out), (pre_state, new_adam, state[2], state[3])

    if one_node and float(lr) == 0.0:  # type: ignore[arg-type]
        one_node = False
    fusable = (
        foreach is not False
        and None not in numbers
        and eps_root == 0.0
        and not nesterov
        and not moment_requires_grad
        and mask is None
        and (is_schedule(lr) or _fused.as_float(lr) is not None)
    )
    if not fusable:
        if not one_node:
            return generic

        def update_one_node(
            updates: Updates,
            state: OptState,
            params: Params | None = None,
            *,
            inplace: bool = True,
            **extra: Any,
        ) -> tuple[Updates, OptState]:
            if inplace:
                return generic.update(updates, state, params, inplace=True, **extra)
            return differentiable_update(updates, state, params, extra)

        return GradientTransformation(generic.init, update_one_node)
    fb1, fb2, feps, fwd = (float(x) for x in numbers)  # type: ignore[arg-type]

    def lr_now(state: OptState) -> float:
        if is_schedule(lr):
            return float(lr(int(state[3].count)))  # type: ignore[operator]
        return float(lr)  # type: ignore[arg-type]

    def tick(state: OptState) -> None:
        if is_schedule(lr):
            state[3].count.add_(1)

    def adam_lists(updates: Any, state: OptState) -> tuple[Selection, list[list[torch.Tensor]]]:
        adam_state = state[1]
        trees = [adam_state.mu, adam_state.nu, adam_state.count]
        if amsgrad:
            trees.append(adam_state.nu_max)
        sel = Selection(updates, trees, ["mu", "nu", "count", "nu_max"][: len(trees)])
        lists = [sel.state(k) for k in range(len(trees))]
        if not amsgrad:
            lists.append([])
        return sel, lists

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra: Any,
    ) -> tuple[Updates, OptState]:
        if not inplace:
            if one_node:
                return differentiable_update(updates, state, params, extra)
            return generic.update(updates, state, params, inplace=inplace, **extra)
        sel, (mus, nus, counts, maxs) = adam_lists(updates, state)
        gs = sel.updates
        step_lr = lr_now(state)
        if (
            any(g.requires_grad for g in gs)
            or not _fused.can_fuse(gs, mus, nus)
            or _fused.cancelling_decay(step_lr) is None
        ):
            return generic.update(updates, state, params, inplace=inplace, **extra)
        needs_params = fwd != 0.0
        if needs_params and params is None:
            raise ValueError("weight_decay needs params: call update(updates, state, params)")
        ps = [tree_leaves(params)[i].detach() for i in sel.indices] if needs_params else []
        kernel_maximize = maximize
        if not decoupled and fwd != 0.0:
            if maximize:
                torch._foreach_neg_(gs)
                kernel_maximize = False
            torch._foreach_add_(gs, ps, alpha=fwd)
        _fused.fused_adam_updates(
            gs,
            mus,
            nus,
            maxs,
            counts,
            lr=step_lr,
            b1=fb1,
            b2=fb2,
            eps=feps,
            amsgrad=amsgrad,
            maximize=kernel_maximize,
        )
        if decoupled and fwd != 0.0:
            torch._foreach_add_(gs, ps, alpha=-step_lr * fwd)
        tick(state)
        return sel.updates_tree(gs), state

    def apply_fused(params: Params, grads: Updates, state: OptState) -> OptState | None:
        sel, (mus, nus, counts, maxs) = adam_lists(grads, state)
        gs = sel.updates
        all_params = tree_leaves(params)
        ps = [all_params[i] for i in sel.indices]
        step_lr = lr_now(state)
        if not gs or not _fused.can_fuse(ps, gs, mus, nus):
            return None
        with torch.no_grad():
            _fused.fused_adam_step(
                ps,
                gs,
                mus,
                nus,
                maxs,
                counts,
                lr=step_lr,
                b1=fb1,
                b2=fb2,
                eps=feps,
                weight_decay=fwd,
                decoupled=decoupled,
                amsgrad=amsgrad,
                maximize=maximize,
            )
        tick(state)
        return state

    return GradientTransformation(generic.init, update, apply_fused)


def adam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
    eps: float | torch.Tensor = 1e-8,
    weight_decay: float | torch.Tensor = 0.0,
    *,
    eps_root: float = 0.0,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    amsgrad: bool = False,
    nesterov: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Adam (Kingma and Ba, 2015) with coupled L2 ``weight_decay``, as ``torch.optim.Adam``.

    On the CPU with plain-number hyperparameters, in-place updates go through torch's
    fused Adam kernel. In differentiable mode (``inplace=False``) the square root has a
    finite derivative at 0, so meta-gradients stay finite when gradients are exactly zero.

    >>> import torch, optiquant as oq
    >>> p = {"w": torch.tensor([1.0, -1.0])}
    >>> tx = oq.adam(lr=0.1)
    >>> u, _ = tx.update({"w": torch.tensor([3.0, -0.5])}, tx.init(p), p)
    >>> torch.allclose(u["w"], torch.tensor([-0.1, 0.1]))
    True
    """
    return _adam_like(
        lr,
        betas,
        eps,
        weight_decay,
        decoupled=False,
        eps_root=eps_root,
        mask=None,
        moment_requires_grad=moment_requires_grad,
        maximize=maximize,
        amsgrad=amsgrad,
        nesterov=nesterov,
        foreach=foreach,
    )


def adamw(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
    eps: float | torch.Tensor = 1e-8,
    weight_decay: float | torch.Tensor = 1e-2,
    *,
    eps_root: float = 0.0,
    mask: Any = None,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    amsgrad: bool = False,
    nesterov: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """AdamW: Adam with decoupled weight decay (where ``mask`` is true), as ``torch.optim.AdamW``.

    >>> import torch, optiquant as oq
    >>> p = torch.tensor([1.0])
    >>> tx = oq.adamw(lr=0.1, weight_decay=0.5)
    >>> u, _ = tx.update(torch.tensor([0.0]), tx.init(p), p)
    >>> torch.allclose(u, torch.tensor([-0.05]))
    True
    """
    return _adam_like(
        lr,
        betas,
        eps,
        weight_decay,
        decoupled=True,
        eps_root=eps_root,
        mask=mask,
        moment_requires_grad=moment_requires_grad,
        maximize=maximize,
        amsgrad=amsgrad,
        nesterov=nesterov,
        foreach=foreach,
    )


def adamax(
    lr: ScalarOrSchedule = 2e-3,
    betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
    eps: float | torch.Tensor = 1e-8,
    weight_decay: float | torch.Tensor = 0.0,
    *,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Adamax (the infinity-norm variant of Adam), as ``torch.optim.Adamax``.

    >>> import torch, optiquant as oq
    >>> p = torch.tensor([0.0])
    >>> tx = oq.adamax(lr=0.1)
    >>> u, _ = tx.update(torch.tensor([4.0]), tx.init(p), p)
    >>> torch.allclose(u, torch.tensor([-0.1]))
    True
    """
    _check_common(lr, eps, weight_decay)
    b1, b2 = check_betas(betas)
    generic = chain(
        _sign_and_decay(maximize, weight_decay, foreach),
        scale_by_adamax(b1, b2, eps, moment_requires_grad=moment_requires_grad, foreach=foreach),
        _neg_lr(lr, foreach),
    )
    if foreach is False:
        return generic

    def run(
        ps: list[torch.Tensor],
        gs: list[torch.Tensor],
        sel: Selection,
        state: OptState,
        step_lr: float,
    ) -> None:
        _direct.adamax_step(
            ps,
            gs,
            sel.state(0),
            sel.state(1),
            sel.state(2),
            lr=step_lr,
            b1=float(b1),
            b2=float(b2),
            eps=float(eps),
        )

    return _with_direct(
        generic,
        lr,
        (b1, b2, eps),
        lambda st: [st[1].mu, st[1].nu, st[1].count],
        2,
        maximize,
        weight_decay,
        0.0,
        run,
    )


def radam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
    eps: float | torch.Tensor = 1e-8,
    weight_decay: float | torch.Tensor = 0.0,
    *,
    decoupled_weight_decay: bool = False,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Rectified Adam, as ``torch.optim.RAdam``.

    >>> import torch, optiquant as oq
    >>> p = torch.tensor([0.0])
    >>> tx = oq.radam(lr=0.1)
    >>> u, _ = tx.update(torch.tensor([4.0]), tx.init(p), p)
    >>> torch.allclose(u, torch.tensor([-0.4]))
    True
    """
    _check_common(lr, eps, weight_decay)
    b1, b2 = check_betas(betas)
    pre, post, coupled_wd, decoupled_wd = _decay_split(
        maximize, weight_decay, decoupled_weight_decay, foreach
    )
    generic = chain(
        pre,
        scale_by_radam(b1, b2, eps, moment_requires_grad=moment_requires_grad, foreach=foreach),
        post,
        _neg_lr(lr, foreach),
    )
    if foreach is False:
        return generic

    def run(
        ps: list[torch.Tensor],
        gs: list[torch.Tensor],
        sel: Selection,
        state: OptState,
        step_lr: float,
    ) -> None:
        _direct.radam_step(
            ps,
            gs,
            sel.state(0),
            sel.state(1),
            sel.state(2),
            lr=step_lr,
            b1=float(b1),
            b2=float(b2),
            eps=float(eps),
        )

    return _with_direct(
        generic,
        lr,
        (b1, b2, eps),
        lambda st: [st[1].mu, st[1].nu, st[1].count],
        3,
        maximize,
        coupled_wd,
        decoupled_wd,
        run,
    )


def nadam(
    lr: ScalarOrSchedule = 2e-3,
    betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
    eps: float | torch.Tensor = 1e-8,
    weight_decay: float | torch.Tensor = 0.0,
    momentum_decay: float = 4e-3,
    *,
    decoupled_weight_decay: bool = False,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """NAdam with momentum decay, as ``torch.optim.NAdam``.

    >>> import torch, optiquant as oq
    >>> p = torch.tensor([0.0])
    >>> tx = oq.nadam(lr=0.1)
    >>> u, _ = tx.update(torch.tensor([1.0]), tx.init(p), p)
    >>> bool(u < 0)
    True
    """
    _check_common(lr, eps, weight_decay)
    b1, b2 = check_betas(betas)
    pre, post, coupled_wd, decoupled_wd = _decay_split(
        maximize, weight_decay, decoupled_weight_decay, foreach
    )
    generic = chain(
        pre,
        scale_by_nadam(
            b1, b2, eps, momentum_decay, moment_requires_grad=moment_requires_grad, foreach=foreach
        ),
        post,
        _neg_lr(lr, foreach),
    )
    if foreach is False:
        return generic

    def run(
        ps: list[torch.Tensor],
        gs: list[torch.Tensor],
        sel: Selection,
        state: OptState,
        step_lr: float,
    ) -> None:
        _direct.nadam_step(
            ps,
            gs,
            sel.state(0),
            sel.state(1),
            sel.state(2),
            sel.state(3),
            lr=step_lr,
            b1=float(b1),
            b2=float(b2),
            eps=float(eps),
            momentum_decay=float(momentum_decay),
        )

    return _with_direct(
        generic,
        lr,
        (b1, b2, eps),
        lambda st: [st[1].mu, st[1].nu, st[1].count, st[1].mu_product],
        3,
        maximize,
        coupled_wd,
        decoupled_wd,
        run,
    )


def adagrad(
    lr: ScalarOrSchedule = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float | torch.Tensor = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float | torch.Tensor = 1e-10,
    *,
    maximize: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Adagrad with learning-rate decay ``lr / (1 + t * lr_decay)``, as ``torch.optim.Adagrad``.

    >>> import torch, optiquant as oq
    >>> p = torch.tensor([0.0])
    >>> tx = oq.adagrad(lr=0.1)
    >>> u, _ = tx.update(torch.tensor([2.0]), tx.init(p), p)
    >>> torch.allclose(u, torch.tensor([-0.1]))
    True
    """
    _check_common(lr, eps, weight_decay)
    check_non_negative(lr_decay, "lr_decay")
    if lr_decay == 0:
        final = _neg_lr(lr, foreach)
    elif is_schedule(lr):
        final = scale_by_schedule(lambda c: -lr(c) / (1.0 + c * lr_decay), foreach=foreach)  # type: ignore[operator]
    else:
        final = scale_by_schedule(lambda c: -lr / (1.0 + c * lr_decay), foreach=foreach)  # type: ignore[operator]
    generic = chain(
        _sign_and_decay(maximize, weight_decay, foreach),
        scale_by_rss(initial_accumulator_value, eps, foreach=foreach),
        final,
    )
    numbers = [_fused.as_float(x) for x in (lr, eps, weight_decay)]
    if foreach is False or None in numbers:
        return generic
    f_lr, f_eps, f_wd = (float(x) for x in numbers)  # type: ignore[arg-type]

    def apply_fused(params: Params, grads: Updates, state: OptState) -> OptState | None:
        sel = Selection(grads, [state[1].sum_of_squares], ["sum_of_squares"])
        gs = sel.updates
        all_params = tree_leaves(params)
        ps = [all_params[i] for i in sel.indices]
        sums = sel.state(0)
        if not gs or not _fused.can_fuse(ps, gs, sums) or _fused.has_dtensor(ps):
            return None
        count = int(state[2].count) if lr_decay != 0 else 0
        step = torch.tensor(float(count + 1))
        with torch.no_grad():
            torch._fused_adagrad_(
                ps,
                gs,
                sums,
                [step] * len(ps),
                lr=f_lr,
                lr_decay=float(lr_decay),
                weight_decay=f_wd,
                eps=f_eps,
                maximize=maximize,
                grad_scale=None,
                found_inf=None,
            )
        if lr_decay != 0:
            state[2].count.add_(1)
        return state

    return GradientTransformation(generic.init, generic.update, apply_fused)


def rmsprop(
    lr: ScalarOrSchedule = 1e-2,
    alpha: float | torch.Tensor = 0.99,
    eps: float | torch.Tensor = 1e-8,
    weight_decay: float | torch.Tensor = 0.0,
    momentum: float | torch.Tensor = 0.0,
    centered: bool = False,
    *,
    initial_scale: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """RMSprop (optionally centred, with momentum), as ``torch.optim.RMSprop``.

    >>> import torch, optiquant as oq
    >>> p = torch.tensor([0.0])
    >>> tx = oq.rmsprop(lr=0.01, alpha=0.0)
    >>> u, _ = tx.update(torch.tensor([5.0]), tx.init(p), p)
    >>> torch.allclose(u, torch.tensor([-0.01]))
    True
    """
    _check_common(lr, eps, weight_decay)
    check_beta(alpha, "alpha")
    check_non_negative(momentum, "momentum")
    rescale = scale_by_stddev if centered else scale_by_rms
    generic = chain(
        _sign_and_decay(maximize, weight_decay, foreach),
        rescale(alpha, eps, initial_scale, foreach=foreach),
        trace(momentum, nesterov=nesterov, foreach=foreach),
        _neg_lr(lr, foreach),
    )
    if foreach is False or nesterov:
        return generic
    has_momentum = not (isinstance(momentum, (int, float)) and momentum == 0)

    def trees(st: OptState) -> list[Any]:
        out = [st[1].nu]
        if centered:
            out.append(st[1].mu)
        if has_momentum:
            out.append(st[2].trace)
        return out

    def run(
        ps: list[torch.Tensor],
        gs: list[torch.Tensor],
        sel: Selection,
        state: OptState,
        step_lr: float,
    ) -> None:
        k = 1
        mus = None
        if centered:
            mus, k = sel.state(1), 2
        bufs = sel.state(k) if has_momentum else None
        _direct.rmsprop_step(
            ps,
            gs,
            sel.state(0),
            mus,
            bufs,
            lr=step_lr,
            alpha=float(alpha),
            eps=float(eps),
            momentum=float(momentum),
        )

    return _with_direct(
        generic, lr, (alpha, eps, momentum), trees, 3, maximize, weight_decay, 0.0, run
    )


def lion(
    lr: ScalarOrSchedule = 1e-4,
    betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.99),
    weight_decay: float | torch.Tensor = 0.0,
    *,
    mask: Any = None,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    foreach: bool | None = None,
) -> GradientTransformation:
    """Lion (Chen et al., 2023): signed momentum updates with decoupled weight decay.

    >>> import torch, optiquant as oq
    >>> p = torch.tensor([0.0, 0.0])
    >>> tx = oq.lion(lr=0.1)
    >>> tx.update(torch.tensor([0.3, -2.0]), tx.init(p), p)[0]
    tensor([-0.1000,  0.1000])
    """
    _check_common(lr, None, weight_decay)
    b1, b2 = check_betas(betas)
    return chain(
        flip_sign(foreach=foreach) if maximize else identity(),
        scale_by_lion(b1, b2, moment_requires_grad=moment_requires_grad, foreach=foreach),
        add_decayed_weights(weight_decay, mask, foreach=foreach),
        _neg_lr(lr, foreach),
    )
