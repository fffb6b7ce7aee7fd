"""Iterative linear algebra on pytrees of tensors: conjugate gradient and Neumann series.

``A`` is either a square matrix (for a vector ``b``) or a callable linear operator that maps
a tree shaped like ``b`` to a tree of the same structure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from optiquant._typing import TensorTree
from optiquant.diff._flat import Flat, axpy, check_same_dtype, dot, flat_operator, flatten_tensors
from optiquant.tree import tree_unflatten

__all__ = ["cg", "ns", "ns_inv"]

LinearOperator = Callable[[TensorTree], TensorTree]


def _as_operator(A: LinearOperator | torch.Tensor, b: TensorTree) -> LinearOperator:
    if callable(A):
        return A
    if isinstance(A, torch.Tensor):
        if not isinstance(b, torch.Tensor) or b.ndim != 1:
            raise ValueError("A: a matrix operator needs b to be a 1-d tensor")
        if A.shape != (b.shape[0], b.shape[0]):
            raise ValueError(
                f"A: expected a square matrix of shape {(b.shape[0], b.shape[0])}, "
                f"got {tuple(A.shape)}"
            )
        return lambda x: A @ x
    raise TypeError(f"A: expected a tensor or a callable linear operator, got {type(A).__name__}")


def _check_positive(value: float, name: str, *, allow_zero: bool = True) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(
            f"{name}: expected a finite {'non-negative' if allow_zero else 'positive'} "
            f"number, got {value}"
        )
    return value


def _check_maxiter(maxiter: int | None, default: int) -> int:
    if maxiter is None:
        return default
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 0:
        raise ValueError(f"maxiter: expected a non-negative int or None, got {maxiter!r}")
    return maxiter


def cg(
    A: LinearOperator | torch.Tensor,
    b: TensorTree,
    x0: TensorTree | None = None,
    *,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    M: LinearOperator | torch.Tensor | None = None,
) -> TensorTree:
    """Solve ``A x = b`` for a symmetric positive definite ``A`` by conjugate gradient.

    Iterates until ``||b - A x|| <= max(rtol * ||b||, atol)`` or ``maxiter`` iterations
    (default ``10 * n`` with ``n`` the total number of entries of ``b``, at least 10, so a
    0-d ``b`` is solved too). ``M`` is an optional preconditioner approximating ``A^-1``.

    >>> import torch
    >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> b = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> torch.allclose(cg(A, b, rtol=1e-12), torch.linalg.solve(A, b))
    True
    >>> cg(lambda x: 2 * x, torch.tensor(3.0))
    tensor(1.5000)
    """
    rtol = _check_positive(rtol, "rtol")
    atol = _check_positive(atol, "atol")
    operator = _as_operator(A, b)
    b_leaves, spec = flatten_tensors(b, "b")
    if not b_leaves:
        return b
    check_same_dtype(b_leaves, "b")
    shapes = [x.shape for x in b_leaves]
    matvec = flat_operator(operator, spec, shapes, "A")
    precond: Callable[[Flat], Flat] | None = None
    if M is not None:
        precond = flat_operator(_as_operator(M, b), spec, shapes, "M")
    size = sum(x.numel() for x in b_leaves)
    maxiter = _check_maxiter(maxiter, 10 * max(size, 1))

    if x0 is None:
        x = [torch.zeros_like(v) for v in b_leaves]
        r = list(b_leaves)
    else:
        x, x0_spec = flatten_tensors(x0, "x0")
        if x0_spec != spec:
            raise ValueError(f"x0 must have the structure of b {spec}, got {x0_spec}")
        r = axpy(-1.0, matvec(x), b_leaves)
    b_norm2 = dot(b_leaves, b_leaves).real
    tol2 = max(rtol**2 * float(b_norm2.detach()), atol**2)
    z = precond(r) if precond is not None else r
    p = z
    rz = dot(r, z)
    for _ in range(maxiter):
        if float(dot(r, r).real.detach()) <= tol2:
            break
        Ap = matvec(p)
        pAp = dot(p, Ap)
        if float(pAp.abs().detach()) == 0.0:
            break
        alpha = rz / pAp
        x = axpy(alpha, p, x)
        r = axpy(-alpha, Ap, r)
        z = precond(r) if precond is not None else r
        rz_new = dot(r, z)
        beta = rz_new / rz
        p = axpy(beta, p, z)
        rz = rz_new
    return tree_unflatten(spec, x)


def ns(
    A: LinearOperator | torch.Tensor,
    b: TensorTree,
    maxiter: int | None = None,
    *,
    alpha: float | None = None,
) -> TensorTree:
    """Approximate ``A^-1 b`` by the Neumann series ``alpha * sum_k (I - alpha A)^k b``.

    Sums ``maxiter + 1`` terms (default ``maxiter=10``). The series converges when the
    spectral radius of ``I - alpha A`` is below one; ``alpha`` defaults to 1.

    >>> import torch
    >>> A = torch.tensor([[1.0, 0.1], [0.1, 1.0]], dtype=torch.float64)
    >>> b = torch.tensor([1.0, 1.0], dtype=torch.float64)
    >>> torch.allclose(ns(A, b, maxiter=60), torch.linalg.solve(A, b))
    True
    """
    operator = _as_operator(A, b)
    maxiter = _check_maxiter(maxiter, 10)
    step = 1.0 if alpha is None else _check_positive(alpha, "alpha", allow_zero=False)
    b_leaves, spec = flatten_tensors(b, "b")
    if not b_leaves:
        return b
    matvec = flat_operator(operator, spec, [x.shape for x in b_leaves], "A")
    term = [step * v for v in b_leaves]
    total = list(term)
    for _ in range(maxiter):
        term = axpy(-step, matvec(term), term)
        total = [s + t for s, t in zip(total, term)]
    return tree_unflatten(spec, total)


def ns_inv(A: torch.Tensor, maxiter: int | None = None, *, alpha: float | None = None) -> Any:
    """Approximate the inverse of the square matrix ``A`` by a Neumann series.

    >>> import torch
    >>> A = torch.tensor([[1.0, 0.2], [0.2, 1.0]], dtype=torch.float64)
    >>> torch.allclose(ns_inv(A, maxiter=80), torch.linalg.inv(A))
    True
    """
    if not isinstance(A, torch.Tensor) or A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A: expected a square matrix, got {getattr(A, 'shape', type(A))}")
    maxiter = _check_maxiter(maxiter, 10)
    step = 1.0 if alpha is None else _check_positive(alpha, "alpha", allow_zero=False)
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    residual = eye - step * A
    term = step * eye
    total = term
    for _ in range(maxiter):
        term = residual @ term
        total = total + term
    return total
