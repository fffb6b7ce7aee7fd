"""The low-rank-approximation (LRA, "UVd") PSGD preconditioner on flat vectors.

``Q = (I + U V^T) diag(d)`` with ``U, V`` of shape ``(n, r)``. ``d`` lives on the
diagonal group; with ``V`` fixed, ``{I + U V^T}`` is a group in ``U`` (and with ``U``
fixed, in ``V``), so each part is fitted by a multiplicative (relative-gradient) step;
``U`` and ``V`` take turns. Only ``r x r`` systems are ever solved.
"""

from __future__ import annotations

import math

import torch

__all__ = ["balance", "dense_q", "init", "precondition", "update"]


def init(
    n: int,
    rank: int,
    scale: float | torch.Tensor = 1.0,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U, V, d)``: random ``U``, ``V`` of Frobenius norm ``sqrt(0.1)`` and ``d = scale``.

    >>> U, V, d = init(5, 2, generator=torch.Generator().manual_seed(0))
    >>> U.shape, round(float(U.norm()) ** 2, 6), d.tolist()
    (torch.Size([5, 2]), 0.1, [1.0, 1.0, 1.0, 1.0, 1.0])
    """
    gen_device = generator.device if generator is not None else device
    u = torch.randn(n, rank, generator=generator, dtype=dtype, device=gen_device).to(device)
    v = torch.randn(n, rank, generator=generator, dtype=dtype, device=gen_device).to(device)
    u = u * (math.sqrt(0.1) / u.norm().clamp_min(1e-30))
    v = v * (math.sqrt(0.1) / v.norm().clamp_min(1e-30))
    d = torch.ones(n, dtype=dtype, device=device) * torch.as_tensor(
        scale, dtype=dtype, device=device
    )
    return u, v, d


def precondition(
    u: torch.Tensor, v: torch.Tensor, d: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """``Q^T Q g``.

    >>> u, v, d = torch.zeros(3, 1), torch.zeros(3, 1), torch.tensor([1.0, 2.0, 3.0])
    >>> precondition(u, v, d, torch.ones(3)).tolist()
    [1.0, 4.0, 9.0]
    """
    x = d * g
    y = x + u @ (v.T @ x)
    return d * (y + v @ (u.T @ y))


def _solve(m: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    return torch.linalg.solve(m, rhs.unsqueeze(-1)).squeeze(-1)


def update(
    u: torch.Tensor,
    v: torch.Tensor,
    d: torch.Tensor,
    vec: torch.Tensor,
    h: torch.Tensor,
    *,
    lr: float | torch.Tensor = 0.1,
    update_u: bool = True,
    step_normalizer: str = "2nd",
    diag_normalizer: str = "global",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fitting step on the pair ``(vec, h)``: ``d`` and one of ``U`` / ``V``.

    ``diag_normalizer`` sets the step size of ``d``: ``"global"`` divides ``lr`` by the
    largest entry of the bound (one step size for all of ``d``), ``"entrywise"`` by
    each entry's own bound. The diagonal group is a direct product of one-dimensional
    groups, so each entry may take its own step; with ``"entrywise"`` the entries of
    ``d`` whose curvature terms are small are no longer slowed down by the largest one
    (a badly scaled diagonal is fitted in a few steps instead of many).

    >>> u, v, d = init(3, 1, generator=torch.Generator().manual_seed(0))
    >>> probe = torch.ones(3)
    >>> new_u, new_v, new_d = update(u, v, d, probe, 2.0 * probe, update_u=True)
    >>> bool(torch.equal(new_v, v)), bool(torch.equal(new_u, u))
    (True, False)
    """
    eye = torch.eye(u.shape[1], dtype=u.dtype, device=u.device)
    a = d * h
    a = a + u @ (v.T @ a)  # Q h
    ph = d * (a + v @ (u.T @ a))  # P h
    w = vec / d
    b = w - v @ _solve(eye + u.T @ v, u.T @ w)  # Q^{-T} vec
    pinv_v = (b - u @ _solve(eye + v.T @ u, v.T @ b)) / d  # P^{-1} vec
    t1, t2 = ph * h, vec * pinv_v
    grad_d = t1 - t2
    lam_d = (t1.abs() + t2.abs()) if step_normalizer == "2nd" else grad_d.abs()
    if diag_normalizer != "entrywise":
        lam_d = lam_d.amax()
    tiny = torch.finfo(d.dtype).tiny
    new_d = d - (lr / lam_d.clamp_min(tiny)) * grad_d * d
    if update_u:
        atv, btv = a @ v, b @ v
        grad = torch.outer(a, atv) - torch.outer(b, btv)
        if step_normalizer == "2nd":
            lam = a.norm() * (v @ atv).norm() + b.norm() * (v @ btv).norm()
        else:
            lam = torch.linalg.matrix_norm(grad)
        new_u = u - (lr / lam.clamp_min(tiny)) * (grad + grad @ (v.T @ u))
        return new_u, v, new_d
    atu, btu = a @ u, b @ u
    grad = torch.outer(a, atu) - torch.outer(b, btu)
    if step_normalizer == "2nd":
        lam = a.norm() * (u @ atu).norm() + b.norm() * (u @ btu).norm()
    else:
        lam = torch.linalg.matrix_norm(grad)
    new_v = v - (lr / lam.clamp_min(tiny)) * (grad + v @ (u.T @ grad))
    return u, new_v, new_d


def balance(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale ``U`` and ``V`` to equal norms (``U V^T`` unchanged).

    >>> u, v = balance(torch.full((2, 1), 4.0), torch.full((2, 1), 1.0))
    >>> u.flatten().tolist(), v.flatten().tolist()
    ([2.0, 2.0], [2.0, 2.0])
    """
    nu, nv = u.norm(), v.norm()
    ok = (nu > 0) & (nv > 0) & torch.isfinite(nu) & torch.isfinite(nv)
    rho = torch.where(ok, torch.sqrt(nu / torch.where(ok, nv, 1.0)), torch.ones_like(nu))
    return u / rho, v * rho


def dense_q(u: torch.Tensor, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The explicit ``Q`` (for tests and inspection).

    >>> dense_q(torch.ones(2, 1), torch.ones(2, 1), torch.ones(2)).tolist()
    [[2.0, 1.0], [1.0, 2.0]]
    """
    eye = torch.eye(d.shape[0], dtype=d.dtype, device=d.device)
    return (eye + u @ v.T) * d
