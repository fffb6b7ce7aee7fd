"""Linear solvers for implicit differentiation.

Each factory returns a ``solver(matvec, b) -> x`` that solves ``A x = b`` where ``matvec``
applies the linear operator ``A`` to a pytree shaped like ``b``. The pytree may have any
number of leaves: the operator is treated as one matrix over all leaves together,
off-diagonal blocks included.

``matvec`` must be composable with :mod:`torch.func` for :func:`solve_normal_cg` (which
needs ``A^T``) and for the exact :func:`solve_inv` (which builds ``A`` column by column
with :func:`torch.func.vmap`); the operators built by :func:`~optiquant.diff.custom_root`
are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from optiquant._typing import TensorTree
from optiquant.diff import linalg
from optiquant.diff._flat import (
    check_same_dtype,
    flat_operator,
    flatten_tensors,
    from_vector,
    to_vector,
)
from optiquant.tree import tree_unflatten

__all__ = ["solve_cg", "solve_inv", "solve_normal_cg"]

Matvec = Callable[[TensorTree], TensorTree]
#: ``solver(matvec, b) -> x`` with ``matvec(x) == b`` (approximately).
LinearSolver = Callable[[Matvec, TensorTree], TensorTree]


def _check_ridge(ridge: float | None) -> float:
    if ridge is None:
        return 0.0
    value = float(ridge)
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"ridge: expected a finite non-negative number or None, got {ridge!r}")
    return value


def _with_ridge(matvec: Matvec, ridge: float) -> Matvec:
    if ridge == 0.0:
        return matvec
    return lambda x: _tree_axpy(ridge, x, matvec(x))


def _tree_axpy(alpha: float, x: TensorTree, y: TensorTree) -> TensorTree:
    x_leaves, spec = flatten_tensors(x, "x")
    y_leaves, y_spec = flatten_tensors(y, "matvec output")
    if y_spec != spec:
        raise ValueError(f"matvec must return a tree with the structure {spec}, got {y_spec}")
    return tree_unflatten(spec, [b + alpha * a for a, b in zip(x_leaves, y_leaves)])


def solve_cg(
    *,
    ridge: float | None = None,
    init: TensorTree | None = None,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    M: Matvec | None = None,
) -> LinearSolver:
    """A conjugate-gradient solver for symmetric positive definite operators.

    Solves ``(A + ridge * I) x = b``; ``init`` is the starting point, the other options are
    those of :func:`optiquant.diff.linalg.cg`.

    >>> import torch
    >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> solver = solve_cg(rtol=1e-12)
    >>> x = solver(lambda v: A @ v, torch.tensor([1.0, 0.0], dtype=torch.float64))
    >>> torch.allclose(A @ x, torch.tensor([1.0, 0.0], dtype=torch.float64))
    True
    """
    ridge_value = _check_ridge(ridge)
    linalg._check_positive(rtol, "rtol")
    linalg._check_positive(atol, "atol")
    linalg._check_maxiter(maxiter, 0)

    def solve(matvec: Matvec, b: TensorTree) -> TensorTree:
        return linalg.cg(
            _with_ridge(matvec, ridge_value), b, init, rtol=rtol, atol=atol, maxiter=maxiter, M=M
        )

    return solve


def solve_normal_cg(
    *,
    ridge: float | None = None,
    init: TensorTree | None = None,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    M: Matvec | None = None,
) -> LinearSolver:
    """A conjugate-gradient solver on the normal equations, for any non-singular operator.

    Solves ``(A^T A + ridge * I) x = A^T b``, which equals ``A x = b`` when ``ridge`` is
    ``None``; ``A^T`` is obtained from ``matvec`` with :func:`torch.func.vjp`.

    >>> import torch
    >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    >>> solver = solve_normal_cg(rtol=1e-12)
    >>> x = solver(lambda v: A @ v, torch.tensor([1.0, 1.0], dtype=torch.float64))
    >>> torch.allclose(x, torch.tensor([-1.0, 1.0], dtype=torch.float64))
    True
    """
    ridge_value = _check_ridge(ridge)
    linalg._check_positive(rtol, "rtol")
    linalg._check_positive(atol, "atol")
    linalg._check_maxiter(maxiter, 0)

    def solve(matvec: Matvec, b: TensorTree) -> TensorTree:
        flatten_tensors(b, "b")
        transpose = torch.func.vjp(matvec, b)[1]

        def rmatvec(y: TensorTree) -> TensorTree:
            return transpose(y)[0]

        def normal_matvec(x: TensorTree) -> TensorTree:
            return rmatvec(matvec(x))

        rhs = rmatvec(b)
        return linalg.cg(
            _with_ridge(normal_matvec, ridge_value),
            rhs,
            init,
            rtol=rtol,
            atol=atol,
            maxiter=maxiter,
            M=M,
        )

    return solve


def solve_inv(
    *,
    ridge: float | None = None,
    ns: bool = False,
    maxiter: int | None = None,
    alpha: float | None = None,
) -> LinearSolver:
    """A direct solver: the dense matrix of the operator and :func:`torch.linalg.solve`.

    The matrix spans all leaves of ``b`` (so coupled leaves are solved exactly); it has
    ``n^2`` entries for ``n`` unknowns, so this suits small problems. With ``ns=True`` the
    inverse is instead approximated by a Neumann series of ``maxiter`` terms and step
    ``alpha`` (see :func:`optiquant.diff.linalg.ns`), which only needs matrix-vector
    products.

    >>> import torch
    >>> A = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> solve_inv()(lambda v: A @ v, torch.tensor([3.0, 3.0], dtype=torch.float64))
    tensor([1., 1.], dtype=torch.float64)
    """
    ridge_value = _check_ridge(ridge)
    linalg._check_maxiter(maxiter, 0)
    if alpha is not None:
        linalg._check_positive(alpha, "alpha", allow_zero=False)

    def solve(matvec: Matvec, b: TensorTree) -> TensorTree:
        operator = _with_ridge(matvec, ridge_value)
        if ns:
            return linalg.ns(operator, b, maxiter, alpha=alpha)
        return _dense_solve(operator, b)

    return solve


def _dense_solve(matvec: Matvec, b: TensorTree) -> Any:
    leaves, spec = flatten_tensors(b, "b")
    if not leaves:
        return b
    check_same_dtype(leaves, "b")
    apply = flat_operator(matvec, spec, [x.shape for x in leaves], "matvec")

    def vector_matvec(vector: torch.Tensor) -> torch.Tensor:
        return to_vector(apply(from_vector(vector, leaves)))

    rhs = to_vector(leaves)
    eye = torch.eye(rhs.numel(), dtype=rhs.dtype, device=rhs.device)
    # Row i of the vmapped result is A e_i, the i-th column of A.
    matrix = torch.func.vmap(vector_matvec)(eye).mT
    solution = torch.linalg.solve(matrix, rhs)
    return tree_unflatten(spec, from_vector(solution, leaves))
