"""Direct multi-tensor parameter steps for the class optimizers.

The functional path computes an update and then adds it to the parameters; a class
optimizer owns the parameters and can fold the step size into the last kernel (as
``torch.optim``'s foreach implementations do) and leave ``p.grad`` untouched. Each
function here performs one step of an alias on lists of tensors, reading and writing the
same state buffers as the alias's functional ``update``, so the two paths are
interchangeable mid-training. The parity tests check both against ``torch.optim``.
"""

from __future__ import annotations

import math

import torch

Tensors = list[torch.Tensor]


def signed_decayed(gs: Tensors, ps: Tensors, maximize: bool, weight_decay: float) -> Tensors:
    """``(-g if maximize else g) + weight_decay * p`` as new tensors (``g`` is not modified)."""
    out = gs
    if maximize:
        out = list(torch._foreach_neg(gs))
    if weight_decay != 0.0:
        if out is gs:
            out = list(torch._foreach_add(gs, ps, alpha=weight_decay))
        else:
            torch._foreach_add_(out, ps, alpha=weight_decay)
    return out


def rmsprop_step(
    ps: Tensors,
    gs: Tensors,
    nus: Tensors,
    mus: Tensors | None,
    bufs: Tensors | None,
    *,
    lr: float,
    alpha: float,
    eps: float,
    momentum: float,
) -> None:
    """One RMSprop step; ``mus`` given means centred, ``bufs`` given means momentum."""
    torch._foreach_mul_(nus, alpha)
    torch._foreach_addcmul_(nus, gs, gs, 1.0 - alpha)
    if mus is not None:
        torch._foreach_lerp_(mus, gs, 1.0 - alpha)
        avg = list(torch._foreach_addcmul(nus, mus, mus, -1.0))
        torch._foreach_sqrt_(avg)
    else:
        avg = list(torch._foreach_sqrt(nus))
    torch._foreach_add_(avg, eps)
    if bufs is not None:
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_addcdiv_(bufs, gs, avg)
        torch._foreach_add_(ps, bufs, alpha=-lr)
    else:
        torch._foreach_addcdiv_(ps, gs, avg, -lr)


def adamax_step(
    ps: Tensors,
    gs: Tensors,
    mus: Tensors,
    nus: Tensors,
    counts: Tensors,
    *,
    lr: float,
    b1: float,
    b2: float,
    eps: float,
) -> None:
    """One Adamax step."""
    torch._foreach_add_(counts, 1.0)
    torch._foreach_lerp_(mus, gs, 1.0 - b1)
    torch._foreach_mul_(nus, b2)
    norm = list(torch._foreach_abs(gs))
    torch._foreach_add_(norm, eps)
    torch._foreach_maximum_(nus, norm)
    torch._foreach_addcdiv_(ps, mus, nus, [-lr / (1.0 - b1 ** float(c)) for c in counts])


def _moments(
    gs: Tensors, mus: Tensors, nus: Tensors, counts: Tensors, b1: float, b2: float
) -> list[float]:
    torch._foreach_add_(counts, 1.0)
    torch._foreach_lerp_(mus, gs, 1.0 - b1)
    torch._foreach_mul_(nus, b2)
    torch._foreach_addcmul_(nus, gs, gs, 1.0 - b2)
    return [float(c) for c in counts]


def radam_step(
    ps: Tensors,
    gs: Tensors,
    mus: Tensors,
    nus: Tensors,
    counts: Tensors,
    *,
    lr: float,
    b1: float,
    b2: float,
    eps: float,
) -> None:
    """One RAdam step (weight decay already folded into ``gs`` or ``ps``)."""
    steps = _moments(gs, mus, nus, counts, b1, b2)
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rect_idx, plain_idx, rect_coef, plain_coef = [], [], [], []
    for i, t in enumerate(steps):
        bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
        rho_t = rho_inf - 2.0 * t * b2**t / bc2
        if rho_t > 5.0:
            rect = math.sqrt(
                (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
            )
            rect_idx.append(i)
            rect_coef.append(-lr * rect * math.sqrt(bc2) / bc1)
        else:
            plain_idx.append(i)
            plain_coef.append(-lr / bc1)
    if rect_idx:
        denom = list(torch._foreach_sqrt([nus[i] for i in rect_idx]))
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(
            [ps[i] for i in rect_idx], [mus[i] for i in rect_idx], denom, rect_coef
        )
    if plain_idx:
        scaled = list(torch._foreach_mul([mus[i] for i in plain_idx], plain_coef))
        torch._foreach_add_([ps[i] for i in plain_idx], scaled)


def nadam_step(
    ps: Tensors,
    gs: Tensors,
    mus: Tensors,
    nus: Tensors,
    counts: Tensors,
    products: Tensors,
    *,
    lr: float,
    b1: float,
    b2: float,
    eps: float,
    momentum_decay: float,
) -> None:
    """One NAdam step (weight decay already folded into ``gs`` or ``ps``)."""
    steps = _moments(gs, mus, nus, counts, b1, b2)
    grad_coef, mom_coef = [], []
    for buf, t in zip(products, steps):
        mu_now = b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1.0) * momentum_decay))
        product = float(buf) * mu_now
        buf.fill_(product)
        grad_coef.append(-lr * (1.0 - mu_now) / (1.0 - product))
        mom_coef.append(-lr * mu_next / (1.0 - product * mu_next))
    denom = list(torch._foreach_div(nus, [1.0 - b2**t for t in steps]))
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(ps, gs, denom, grad_coef)
    torch._foreach_addcdiv_(ps, mus, denom, mom_coef)
