"""The X-shaped PSGD preconditioner, as pure functions on flat vectors.

``Q = diag(a) + adiag(b)``: ``Q x = a * x + b * flip(x)``, a matrix whose only nonzero
entries lie on the diagonal and the anti-diagonal. Such matrices form a group
(products and inverses stay X-shaped; each index ``i`` only mixes with
``n - 1 - i``), so ``Q`` is fitted by multiplicative steps like every PSGD factor.
For odd ``n`` the middle entry of ``b`` is kept at zero.
"""

from __future__ import annotations

import torch

__all__ = ["dense_q", "init", "precondition", "update"]


def init(
    n: int,
    scale: float | torch.Tensor = 1.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``Q = scale * I``.

    >>> a, b = init(3, 2.0)
    >>> a.tolist(), b.tolist()
    ([2.0, 2.0, 2.0], [0.0, 0.0, 0.0])
    """
    a = torch.ones(n, dtype=dtype, device=device) * torch.as_tensor(
        scale, dtype=dtype, device=device
    )
    return a, torch.zeros(n, dtype=dtype, device=device)


def precondition(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``Q^T Q g``.

    >>> a, b = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0])
    >>> precondition(a, b, torch.tensor([1.0, 0.0])).tolist()   # Q = [[1, 1], [0, 2]]
    [1.0, 1.0]
    """
    ab = a * b
    return (a * a + (b * b).flip(0)) * g + (ab + ab.flip(0)) * g.flip(0)


def update(
    a: torch.Tensor,
    b: torch.Tensor,
    v: torch.Tensor,
    h: torch.Tensor,
    *,
    lr: float | torch.Tensor = 0.1,
    step_normalizer: str = "2nd",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fitting step on the pair ``(v, h)``; returns the new ``(a, b)``.

    Each block (index ``i`` with ``n - 1 - i``) is normalised by the spectral norm of its
    own curvature bound (``"2nd"``) or of its own gradient (``"1st"``).

    >>> a, b = init(4)
    >>> gen = torch.Generator().manual_seed(0)
    >>> for _ in range(200):
    ...     v = torch.randn(4, generator=gen)
    ...     a, b = update(a, b, v, 4.0 * v, lr=0.5)   # H = 4 I, so P -> I / 4
    >>> torch.allclose(precondition(a, b, torch.ones(4)), torch.full((4,), 0.25), atol=1e-3)
    True
    """
    fa, fb = a.flip(0), b.flip(0)
    qh = a * h + b * h.flip(0)
    qv = (fa * v - fb * v.flip(0)) / (a * fa - b * fb)  # Q^{-T} v
    fqh, fqv = qh.flip(0), qv.flip(0)
    grad_a = qh * qh - qv * qv
    grad_b = qh * fqh - qv * fqv
    n = a.shape[0]
    if n % 2 == 1:
        grad_b[n // 2] = 0.0
    # The X-shaped group is a direct product of independent 2x2 (and, for odd n, 1x1)
    # blocks pairing i with n-1-i, so each block gets its own step size.
    if step_normalizer == "2nd":
        # exact spectral norm of each block of the projection of Qh Qh^T + Qv Qv^T
        alpha = qh * qh + qv * qv
        beta = qh * fqh + qv * fqv
        half = 0.5 * (alpha + alpha.flip(0))
        lam = half + torch.sqrt((0.5 * (alpha - alpha.flip(0))) ** 2 + beta * beta)
    else:
        lam = torch.maximum(grad_a.abs(), grad_b.abs())
        lam = torch.maximum(lam, lam.flip(0))
    mu = lr / lam.clamp_min(torch.finfo(lam.dtype).tiny)
    new_a = a - mu * (grad_a * a + grad_b * fb)
    new_b = b - mu * (grad_a * b + grad_b * fa)
    return new_a, new_b


def dense_q(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The explicit ``Q`` (for tests and inspection).

    >>> dense_q(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])).tolist()
    [[1.0, 3.0], [4.0, 2.0]]
    """
    n = a.shape[0]
    q = torch.diag(a)
    idx = torch.arange(n, device=a.device)
    q[idx, n - 1 - idx] += b
    return q
