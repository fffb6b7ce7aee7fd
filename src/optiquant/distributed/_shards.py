"""Where the pieces of a sharded tensor live: DTensor checks and shard geometry.

The distributed optimizers handle two kinds of parameters:

* plain tensors, replicated on every rank (``DistributedDataParallel``): every rank
  holds the whole tensor and, after backward, the same averaged gradient;
* ``DTensor`` parameters on a one-dimensional device mesh with a single ``Shard(dim)``
  or ``Replicate()`` placement (``torch.distributed.fsdp.fully_shard``, FSDP2): rank
  ``r`` holds chunk ``r`` of ``torch.chunk(tensor, world_size, dim)`` (empty chunks
  for the last ranks when the dimension is short).

Anything else (2-D meshes, ``Partial`` placements, several shardings) is rejected
with a ``ValueError`` that says what is supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ShardInfo", "chunk_bounds", "full_like_local", "is_dtensor", "shard_info"]


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor``."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def chunk_bounds(size: int, parts: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each of ``parts`` chunks of ``size`` rows, as ``torch.chunk``
    cuts them (chunks of ``ceil(size / parts)``; the last ones may be short or empty).

    >>> chunk_bounds(5, 2), chunk_bounds(1, 2)
    ([(0, 3), (3, 2)], [(0, 1), (1, 0)])
    """
    step = -(-size // parts) if size else 0
    out = []
    for r in range(parts):
        start = min(r * step, size)
        out.append((start, min(step, size - start)))
    return out


@dataclass(frozen=True)
class ShardInfo:
    """How one tensor is spread over a 1-D mesh: ``dim`` is ``None`` when replicated."""

    shape: tuple[int, ...]
    dim: int | None
    world_size: int

    def local_shape(self, rank: int) -> tuple[int, ...]:
        """Shape of the piece held by ``rank``."""
        if self.dim is None:
            return self.shape
        shape = list(self.shape)
        shape[self.dim] = chunk_bounds(self.shape[self.dim], self.world_size)[rank][1]
        return tuple(shape)

    def local_numel(self, rank: int) -> int:
        """Number of elements held by ``rank``."""
        n = 1
        for s in self.local_shape(rank):
            n *= s
        return n

    def split(self, full: torch.Tensor) -> list[torch.Tensor]:
        """The piece of ``full`` held by each rank (views; the whole tensor if replicated)."""
        if self.dim is None:
            return [full] * self.world_size
        return [
            full.narrow(self.dim, start, length)
            for start, length in chunk_bounds(self.shape[self.dim], self.world_size)
        ]


def shard_info(t: torch.Tensor, name: str, world_size: int) -> ShardInfo:
    """The :class:`ShardInfo` of parameter ``t`` (a plain tensor is replicated).

    Raises ``ValueError`` for DTensor layouts other than one ``Shard``/``Replicate``
    placement on a 1-D mesh of ``world_size`` ranks.
    """
    if not is_dtensor(t):
        return ShardInfo(tuple(t.shape), None, world_size)
    from torch.distributed.tensor import Replicate, Shard

    mesh = t.device_mesh  # type: ignore[attr-defined]
    placements = tuple(t.placements)  # type: ignore[attr-defined]
    supported = (
        "DTensors on a 1-D device mesh with one Shard(dim) or Replicate() placement "
        "(what torch.distributed.fsdp.fully_shard makes)"
    )
    if mesh.ndim != 1 or len(placements) != 1:
        raise ValueError(
            f"{name}: a DTensor on a {mesh.ndim}-D mesh with placements {placements} is not "
            f"supported; supported are {supported}"
        )
    if mesh.size() != world_size:
        raise ValueError(
            f"{name}: its device mesh has {mesh.size()} ranks but the process group has "
            f"{world_size}; use the mesh's process group"
        )
    (placement,) = placements
    if isinstance(placement, Replicate):
        return ShardInfo(tuple(t.shape), None, world_size)
    if not isinstance(placement, Shard):
        raise ValueError(
            f"{name}: placement {placement} is not supported; supported are {supported}"
        )
    info = ShardInfo(tuple(t.shape), placement.dim % max(t.ndim, 1), world_size)
    local = tuple(t.to_local().shape)  # type: ignore[attr-defined]
    expected = info.local_shape(mesh.get_local_rank())
    if local != expected:
        raise ValueError(
            f"{name}: local shard has shape {local}, expected {expected} (torch.chunk "
            "layout); uneven custom shardings are not supported"
        )
    return info


def full_like_local(full: torch.Tensor, like: Any) -> Any:
    """``full`` (the same on every rank) laid out like the DTensor ``like`` (no communication)."""
    from torch.distributed.tensor import DTensor, Replicate

    mesh = like.device_mesh
    rep = DTensor.from_local(full, mesh, [Replicate()], run_check=False)
    return rep.redistribute(mesh, like.placements)
