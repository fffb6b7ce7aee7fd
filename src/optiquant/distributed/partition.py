"""Which rank owns which parameter: cost estimates and a balanced, deterministic split."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from optiquant.psgd import kron_factor_kinds

__all__ = ["balanced_owners", "kron_cost"]


def kron_cost(
    shape: Sequence[int],
    *,
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: str | None = None,
) -> int:
    """Estimated arithmetic of one Kron fit-and-precondition step on a tensor of ``shape``.

    Each full factor of size ``d`` multiplies the ``numel``-element tensor along its mode
    (``numel * d`` multiply-adds, a few times per step) and costs ``d**3`` for its own
    products and solves; diagonal factors cost ``numel``.

    >>> kron_cost((1024, 1024)) > kron_cost((1024, 256)) > kron_cost((4096,))
    True
    """
    shape = tuple(int(s) for s in shape)
    numel = 1
    for s in shape:
        numel *= s
    kinds = kron_factor_kinds(
        shape,
        max_size_triangular=max_size_triangular,
        min_ndim_triangular=min_ndim_triangular,
        memory_save_mode=memory_save_mode,
    )
    core = shape if shape else (1,)
    cost = 4 * numel
    for size, full in zip(core, kinds):
        if full:
            cost += 6 * numel * size + 2 * size**3
        else:
            cost += 4 * numel
    return cost


def balanced_owners(costs: Sequence[float], world_size: int) -> list[int]:
    """An owner rank for each item so that the largest total cost is small.

    Items are placed from the most to the least expensive on the least loaded rank
    (ties: the earlier item, the lower rank), so every process computes the same
    answer from the same inputs.

    >>> balanced_owners([5, 1, 4, 2, 3, 3], 2)
    [0, 0, 1, 1, 1, 0]
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: expected an int >= 1, got {world_size!r}")
    for i, c in enumerate(costs):
        if not c >= 0:
            raise ValueError(f"costs: entry {i} must be a non-negative number, got {c!r}")
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    loads = [(0.0, r) for r in range(world_size)]
    heapq.heapify(loads)
    owners = [0] * len(costs)
    for i in order:
        load, r = heapq.heappop(loads)
        owners[i] = r
        heapq.heappush(loads, (load + float(costs[i]), r))
    return owners
