"""Structured matrix products used by the PSGD preconditioners.

Every function works on batches: matrices are ``(B, d, d)`` and right-hand sides
``(B, d, r)``. Products that involve an upper-triangular factor are computed by
block rows so that the known zeros are skipped (about half the work of a dense
product for large ``d``). When autograd has to see the computation (grad mode on
and an input requires grad) the plain dense product is used instead, since
``out=`` writes are not differentiable; both give the same values.
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "block_bounds",
    "gram_norm_estimate",
    "triu_gram_diff",
    "triu_mm",
    "triu_t_mm",
    "triu_triu_mm",
]

_MIN_BLOCK = 128
_MAX_BLOCKS = 8


def block_bounds(d: int) -> list[tuple[int, int]]:
    """Row blocks ``[(start, end), ...]`` used to split a dimension of size ``d``.

    >>> block_bounds(100)
    [(0, 100)]
    >>> block_bounds(1024)
    [(0, 128), (128, 256), (256, 384), (384, 512), (512, 640), (640, 768), (768, 896), (896, 1024)]
    """
    k = max(1, min(_MAX_BLOCKS, d // _MIN_BLOCK))
    edges = [round(i * d / k) for i in range(k + 1)]
    return [(edges[i], edges[i + 1]) for i in range(k)]


@functools.lru_cache(maxsize=64)
def _upper_mask(d: int, device: torch.device) -> torch.Tensor:
    return torch.ones(d, d, dtype=torch.bool, device=device).triu()


def _triu_small(g: torch.Tensor) -> torch.Tensor:
    # torch.triu always opens a parallel region, which costs far more than the copy for
    # small matrices when the cores are busy; a cached mask avoids it.
    return torch.where(_upper_mask(g.shape[-1], g.device), g, 0.0)


def _traced(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def triu_mm(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``q @ x`` for upper-triangular ``q`` (``(B, d, d)``) and ``x`` (``(B, d, r)``).

    >>> q = torch.ones(1, 3, 3).triu()
    >>> triu_mm(q, torch.ones(1, 3, 1)).flatten().tolist()
    [3.0, 2.0, 1.0]
    """
    d = q.shape[-1]
    bounds = block_bounds(d)
    if len(bounds) == 1 or _traced(q, x):
        return torch.matmul(q, x)
    out = torch.empty(x.shape, dtype=torch.result_type(q, x), device=x.device)
    for s, e in bounds:
        torch.matmul(q[:, s:e, s:], x[:, s:], out=out[:, s:e])
    return out


def triu_t_mm(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``q.mT @ x`` for upper-triangular ``q`` (so ``q.mT`` is lower-triangular).

    >>> q = torch.ones(1, 3, 3).triu()
    >>> triu_t_mm(q, torch.ones(1, 3, 1)).flatten().tolist()
    [1.0, 2.0, 3.0]
    """
    d = q.shape[-1]
    bounds = block_bounds(d)
    if len(bounds) == 1 or _traced(q, x):
        return torch.matmul(q.mT, x)
    out = torch.empty(x.shape, dtype=torch.result_type(q, x), device=x.device)
    for s, e in bounds:
        torch.matmul(q[:, :e, s:e].mT, x[:, :e], out=out[:, s:e])
    return out


def triu_triu_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for two upper-triangular batches; the result is upper-triangular.

    >>> a = torch.ones(1, 3, 3).triu()
    >>> triu_triu_mm(a, a)[0].tolist()
    [[1.0, 2.0, 3.0], [0.0, 1.0, 2.0], [0.0, 0.0, 1.0]]
    """
    d = a.shape[-1]
    bounds = block_bounds(d)
    if len(bounds) == 1 or _traced(a, b):
        return torch.matmul(a, b)
    out = torch.zeros(a.shape, dtype=torch.result_type(a, b), device=a.device)
    for s, e in bounds:
        torch.matmul(a[:, s:e, s:], b[:, s:, s:], out=out[:, s:e, s:])
    return out


def triu_gram_diff(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """The upper triangle of ``x @ x.mT - y @ y.mT`` (``y`` may be ``None``).

    ``x`` and ``y`` are ``(B, d, r)``; the result is ``(B, d, d)`` with zeros below
    the diagonal.

    >>> x = torch.tensor([[[1.0], [2.0]]])
    >>> triu_gram_diff(x, None)[0].tolist()
    [[1.0, 2.0], [0.0, 4.0]]
    """
    d = x.shape[-2]
    bounds = block_bounds(d)
    if len(bounds) == 1 or _traced(x, y):
        g = torch.matmul(x, x.mT)
        if y is not None:
            g = g - torch.matmul(y, y.mT)
        return _triu_small(g) if d < _MIN_BLOCK else torch.triu(g)
    out = torch.zeros((*x.shape[:-2], d, d), dtype=x.dtype, device=x.device)
    for s, e in bounds:
        blk = out[:, s:e, s:]
        torch.matmul(x[:, s:e], x[:, s:].mT, out=blk)
        if y is not None:
            blk.baddbmm_(y[:, s:e], y[:, s:].mT, alpha=-1.0)
    return out.triu_()


def gram_norm_estimate(
    x: torch.Tensor, y: torch.Tensor | None = None, iters: int = 2
) -> torch.Tensor:
    """A lower bound of the spectral norm of ``x @ x.mT + y @ y.mT``, per batch entry.

    Power iteration started from the row of largest norm; the estimate is never
    below the largest diagonal entry, and never above the true norm. Returns a
    ``(B,)`` tensor.

    >>> x = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])
    >>> gram_norm_estimate(x).tolist()
    [9.0]
    """
    rows = (x * x).sum(-1)
    if y is not None:
        rows = rows + (y * y).sum(-1)
    diag_max, idx = rows.max(-1)
    index = idx.view(-1, 1, 1)
    # u = M e_j where M = x x^T + y y^T
    xr = torch.take_along_dim(x, index, dim=-2)  # (B, 1, r)
    u = torch.matmul(x, xr.mT)
    if y is not None:
        yr = torch.take_along_dim(y, index, dim=-2)
        u = u + torch.matmul(y, yr.mT)
    est = diag_max
    for _ in range(iters):
        unorm = torch.linalg.vector_norm(u, dim=(-2, -1)).clamp_min(torch.finfo(u.dtype).tiny)
        u = u / unorm.view(-1, 1, 1)
        w = torch.matmul(x, torch.matmul(x.mT, u))
        if y is not None:
            w = w + torch.matmul(y, torch.matmul(y.mT, u))
        est = torch.maximum(est, torch.linalg.vector_norm(w, dim=(-2, -1)))
        u = w
    return est
