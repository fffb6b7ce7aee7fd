"""Adam's differentiable step as one autograd node per call (exact gradients, few kernels).

Recording Adam with elementary ops builds about ten graph nodes per tensor and step. This
node computes the new moments and the direction with multi-tensor kernels and writes the
exact vector-Jacobian product by hand:

    m' = b1 m + (1 - b1) g,   v' = b2 v + (1 - b2) g^2,
    s  = sqrt(v' / c2 + eps_root),   u = m' / (k (s + eps)),

    dm'* = dm' + du / (k (s + eps))
    dv'* = dv' - du m' / (2 k c2 (s + eps)^2 s)      (0 where s = 0)
    dg   = (1 - b1) dm'* + 2 (1 - b2) g dv'*,   dm = b1 dm'*,   dv = b2 dv'*

with ``c2`` the second bias correction and ``k`` the first one divided by the step size
(``k = c1`` gives Adam's direction, ``k = -c1 / lr`` the update itself). It is used when
the hyperparameters are plain numbers; tensor hyperparameters take the elementwise path,
which differentiates them too.
The node is once differentiable (second-order meta-gradients raise an error).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch.autograd.function import once_differentiable


class AdamDirection(torch.autograd.Function):
    """``(g, m, v) -> (m', v', u)`` for lists of tensors; see the module documentation."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        b1: float,
        b2: float,
        eps: float,
        eps_root: float,
        denom_scale: list[float],
        bc2: list[float],
        n: int,
        *tensors: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        ctx.set_materialize_grads(False)
        gs, mus, nus = list(tensors[:n]), list(tensors[n : 2 * n]), list(tensors[2 * n :])
        new_mu = list(torch._foreach_lerp(mus, gs, 1.0 - b1))
        new_nu = list(torch._foreach_mul(nus, b2))
        torch._foreach_addcmul_(new_nu, gs, gs, 1.0 - b2)
        # s = sqrt(v'/c2 + eps_root) = r / q with r = sqrt(v' + eps_root c2), q = sqrt(c2),
        # so k (s + eps) = (k / q) (r + eps q): the bias correction folds into scalars.
        q = [math.sqrt(c2) for c2 in bc2]
        root_shift = _scalars([eps_root * c2 for c2 in bc2]) if eps_root else 0.0
        root = _root(new_nu, root_shift)
        shift = _scalars([eps * qi for qi in q])
        scale = _scalars([k / qi for k, qi in zip(denom_scale, q)])
        # du m' / (2 k c2 (s+eps)^2 s) = t u k q / (2 c2 r)   (t = du / denom, u = m' / denom)
        coupling_scale = _scalars([-0.5 * k * qi / c2 for k, qi, c2 in zip(denom_scale, q, bc2)])
        # The backward divides by r, clamped to the smallest normal number. When eps q is
        # far above that number the clamp changes nothing in r + eps q (every practical
        # eps), so one clamped r serves both.
        exact = not root or _clamp_is_exact(eps * min(q), root[0].dtype)
        few = n <= _FEW
        if few:
            # Few (typically large) tensors: every fresh tensor costs page faults. The
            # root's buffer becomes the denominator, then the direction; the backward
            # recomputes the root from v' (an output, saved at no cost).
            torch._foreach_add_(root, shift)
            torch._foreach_mul_(root, scale)
            direction = _quotient(new_mu, root)
            ctx.save_for_backward(*gs, *new_nu, *direction)
        else:
            # Many small tensors: fewer passes win. With w = u / r the backward's coupling
            # term is one product, t * w * scale.
            root_safe = _clamped(root, exact)
            denom = _denominator(root, shift, scale)
            direction = list(torch._foreach_div(new_mu, denom))
            w = list(torch._foreach_div(direction, root_safe))
            ctx.save_for_backward(*gs, *denom, *w)
        ctx.constants = (b1, b2, root_shift, shift, scale, coupling_scale, n, few)
        return (*new_mu, *new_nu, *direction)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[Any, ...]:
        b1, b2, root_shift, shift, scale, coupling_scale, n, few = ctx.constants
        saved = ctx.saved_tensors
        d_mu_out, d_nu_out, d_dir = grads[:n], grads[n : 2 * n], grads[2 * n :]
        gs = list(saved[:n])
        # Incoming gradients may be shared with other nodes: they are only read. The
        # buffers allocated here are updated in place into the results.
        incoming = [torch.zeros_like(g) if d is None else d for d, g in zip(d_dir, gs)]
        if few:
            new_nu, direction = list(saved[n : 2 * n]), list(saved[2 * n :])
            root = _root(new_nu, root_shift)  # exactly as in forward
            # t = du / denom, the sensitivity of u to m' (written over the denominator)
            t = _quotient(incoming, _denominator(root, shift, scale))
            coupling = _quotient(direction, _clamped(root, exact=True))
            torch._foreach_mul_(coupling, t)
            torch._foreach_mul_(coupling, coupling_scale)
        else:
            denom, w = list(saved[n : 2 * n]), list(saved[2 * n :])
            t = list(torch._foreach_div(incoming, denom))
            if all(d is not None for d in d_nu_out):
                coupling = list(
                    torch._foreach_addcmul(
                        cast(list[torch.Tensor], list(d_nu_out)), t, w, coupling_scale
                    )
                )
                d_nu_out = (None,) * n
            else:
                coupling = list(torch._foreach_mul(t, w))
                torch._foreach_mul_(coupling, coupling_scale)
        _add_present(t, d_mu_out)  # t is now d(loss)/d(m')
        _add_present(coupling, d_nu_out)  # coupling is now d(loss)/d(v')
        d_g = list(torch._foreach_mul(t, 1.0 - b1))
        # d_g = (1 - b1) d_m' + 2 (1 - b2) g d_v'
        torch._foreach_addcmul_(d_g, gs, coupling, 2.0 * (1.0 - b2))
        torch._foreach_mul_(t, b1)
        torch._foreach_mul_(coupling, b2)
        return (None, None, None, None, None, None, None, *d_g, *t, *coupling)


def _root(new_nu: list[torch.Tensor], shift: float | list[float]) -> list[torch.Tensor]:
    """New tensors ``sqrt(v' + shift)``."""
    if isinstance(shift, list) or shift:
        root = list(torch._foreach_add(new_nu, shift))
        torch._foreach_sqrt_(root)
        return root
    return list(torch._foreach_sqrt(new_nu))


def _clamped(root: list[torch.Tensor], exact: bool) -> list[torch.Tensor]:
    """``root`` clamped to the smallest normal number: in place if ``exact``, else a copy."""
    if not root:
        return root
    tiny = torch.finfo(root[0].dtype).tiny
    if exact:
        torch._foreach_clamp_min_(root, tiny)
        return root
    return list(torch._foreach_clamp_min(root, tiny))


def _denominator(
    root: list[torch.Tensor], shift: float | list[float], scale: float | list[float]
) -> list[torch.Tensor]:
    """New tensors ``scale * (root + shift)``."""
    denom = list(torch._foreach_add(root, shift))
    torch._foreach_mul_(denom, scale)
    return denom


def _quotient(
    numerators: list[torch.Tensor], denominators: list[torch.Tensor]
) -> list[torch.Tensor]:
    """``numerators / denominators``, written over ``denominators`` when there are few.

    A fresh large tensor costs page faults; for many small tensors one multi-tensor kernel
    costs less than a Python loop.
    """
    if len(numerators) > _FEW:
        return list(torch._foreach_div(numerators, denominators))
    for num, den in zip(numerators, denominators):
        torch.div(num, den, out=den)
    return denominators


_FEW = 8


def _scalars(values: list[float]) -> float | list[float]:
    """One scalar when all ``values`` agree (the fast kernel), else the list."""
    first = values[0] if values else 0.0
    return first if all(v == first for v in values) else values


def _clamp_is_exact(eps: float, dtype: torch.dtype) -> bool:
    """Whether ``max(s, tiny) + eps`` rounds to ``s + eps`` for every ``0 <= s < tiny``."""
    info = torch.finfo(dtype)
    return eps >= info.tiny * 2.0 ** (info.bits + 2)


def _add_present(targets: list[torch.Tensor], extra: tuple[torch.Tensor | None, ...]) -> None:
    """``targets[i] += extra[i]`` in place where ``extra[i]`` is not None."""
    pairs = [(t, e) for t, e in zip(targets, extra) if e is not None]
    if pairs:
        torch._foreach_add_([t for t, _ in pairs], [e for _, e in pairs])


def adam_direction(
    gs: list[torch.Tensor],
    mus: list[torch.Tensor],
    nus: list[torch.Tensor],
    *,
    b1: float,
    b2: float,
    eps: float,
    eps_root: float,
    bc1: list[float],
    bc2: list[float],
    step_size: float = 1.0,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """New moments and ``step_size`` times the Adam direction, as one differentiable node."""
    n = len(gs)
    scale = [c1 / step_size for c1 in bc1]
    out = AdamDirection.apply(b1, b2, eps, eps_root, scale, bc2, n, *gs, *mus, *nus)
    return list(out[:n]), list(out[n : 2 * n]), list(out[2 * n :])
