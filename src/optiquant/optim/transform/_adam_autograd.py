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

from typing import Any

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
        gs, mus, nus = list(tensors[:n]), list(tensors[n : 2 * n]), list(tensors[2 * n :])
        new_mu = list(torch._foreach_lerp(mus, gs, 1.0 - b1))
        new_nu = list(torch._foreach_mul(nus, b2))
        torch._foreach_addcmul_(new_nu, gs, gs, 1.0 - b2)
        root = list(torch._foreach_div(new_nu, bc2))
        if eps_root:
            torch._foreach_add_(root, eps_root)
        torch._foreach_sqrt_(root)
        denom = list(torch._foreach_add(root, eps))
        torch._foreach_mul_(denom, denom_scale)
        direction = list(torch._foreach_div(new_mu, denom))
        ctx.constants = (b1, b2, denom_scale, bc2, n)
        ctx.save_for_backward(*gs, *new_mu, *root, *denom)
        return (*new_mu, *new_nu, *direction)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[Any, ...]:
        b1, b2, denom_scale, bc2, n = ctx.constants
        saved = ctx.saved_tensors
        gs, new_mu, root, denom = (list(saved[k * n : (k + 1) * n]) for k in range(4))
        d_mu_out, d_nu_out, d_dir = grads[:n], grads[n : 2 * n], grads[2 * n :]
        # t = du / (k (s + eps)), the sensitivity of u to m'
        incoming = [torch.zeros_like(g) if d is None else d for d, g in zip(d_dir, gs)]
        t = list(torch._foreach_div(incoming, denom))
        if all(d is None for d in d_mu_out):
            d_mu = t
        else:
            d_mu = [x if d is None else x + d for x, d in zip(t, d_mu_out)]
        # du m' / (2 k c2 (s+eps)^2 s) = t * m' * k / (2 c2 * denom * s)   (denom = k (s + eps))
        coupling = list(torch._foreach_mul(t, new_mu))
        torch._foreach_div_(coupling, denom)
        safe_root = torch._foreach_clamp_min(root, torch.finfo(root[0].dtype).tiny) if root else []
        torch._foreach_div_(coupling, safe_root)  # type: ignore[arg-type]
        torch._foreach_mul_(coupling, [-0.5 * k / c2 for k, c2 in zip(denom_scale, bc2)])
        if all(d is None for d in d_nu_out):
            d_nu = coupling
        else:
            d_nu = [c if d is None else c + d for c, d in zip(coupling, d_nu_out)]
        d_g = list(torch._foreach_mul(d_mu, 1.0 - b1))
        scaled = list(torch._foreach_mul(gs, 2.0 * (1.0 - b2)))
        torch._foreach_addcmul_(d_g, scaled, d_nu)
        d_m_prev = list(torch._foreach_mul(d_mu, b1))
        d_v_prev = list(torch._foreach_mul(d_nu, b2))
        return (None, None, None, None, None, None, None, *d_g, *d_m_prev, *d_v_prev)


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
