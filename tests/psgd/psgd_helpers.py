"""Shared helpers for the PSGD tests: reference matrices and closed forms."""

from __future__ import annotations

import torch


def spd(n: int, cond: float, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A random symmetric positive definite matrix with condition number ``cond``."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=dtype))
    ev = torch.logspace(0.0, float(torch.log10(torch.tensor(cond))), n, dtype=dtype)
    return (q * ev) @ q.T


def matrix_power(c: torch.Tensor, power: float) -> torch.Tensor:
    """``c ** power`` for a symmetric matrix (eigenvalues taken in absolute value)."""
    e, v = torch.linalg.eigh(c)
    return (v * e.abs().pow(power)) @ v.T


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error ``|a - b| / |b|``."""
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))
