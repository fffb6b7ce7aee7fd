"""The affine PSGD preconditioner: each tensor viewed as a matrix ``G`` gets
``P G = Q_l^T Q_l G Q_r^T Q_r`` with ``Q_l``, ``Q_r`` upper-triangular or diagonal.

This is the two-factor case of :mod:`optiquant.psgd.kron_math` (``"eq"`` geometry),
plus the rules that shape a tensor as a matrix and choose the factor types.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["factor_kinds", "matrix_shape"]


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The matrix view of a tensor of ``shape``.

    Scalars become ``(1, 1)`` and vectors ``(1, n)``; a tensor of order ``k > 2``
    is split between two consecutive dimensions, where ``rows**2 + cols**2`` is
    smallest (the most square split, so the view is free).

    >>> matrix_shape(()), matrix_shape((7,)), matrix_shape((3, 4)), matrix_shape((8, 3, 3, 3))
    ((1, 1), (1, 7), (3, 4), (24, 9))
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    splits = [(math.prod(shape[:i]), math.prod(shape[i:])) for i in range(1, len(shape))]
    return min(splits, key=lambda rc: rc[0] * rc[0] + rc[1] * rc[1])


def factor_kinds(
    rows: int, cols: int, *, max_size_triangular: int = 4096, max_skew_triangular: float = 128
) -> tuple[bool, bool]:
    """Whether the left and right factors are full triangular (``True``) or diagonal.

    A side is diagonal when its size is below 2, above ``max_size_triangular``, or
    more than ``max_skew_triangular`` times the other side.

    >>> factor_kinds(1, 100), factor_kinds(1, 200), factor_kinds(64, 9000)
    ((False, True), (False, False), (True, False))
    """

    def full(size: int, other: int) -> bool:
        return 2 <= size <= max_size_triangular and size <= max_skew_triangular * other

    return full(rows, cols), full(cols, rows)
