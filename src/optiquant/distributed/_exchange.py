"""Moving whole tensors to their owner rank and their pieces back (gloo/NCCL collectives).

Every function here is collective: all ranks call it with the same description of the
tensors (indices, owners, shard layouts, dtypes), each with its own local data. One
collective runs per dtype, in a fixed dtype order, so the calls match across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from optiquant.distributed._shards import ShardInfo

__all__ = [
    "Item",
    "broadcast_from_owners",
    "comm_device",
    "gather_to_owners",
    "global_rank",
    "scatter_from_owners",
]


def comm_device(group: Any) -> torch.device:
    """The device small control tensors must live on for ``group``'s backend."""
    if dist.get_backend(group) == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def global_rank(group: Any, rank: int) -> int:
    """The global rank of ``rank`` in ``group`` (``None``: the default group)."""
    return rank if group is None else dist.get_global_rank(group, rank)


@dataclass(frozen=True)
class Item:
    """One tensor taking part in an exchange."""

    index: int
    owner: int
    info: ShardInfo
    dtype: torch.dtype
    device: torch.device


def _by_dtype(items: Sequence[Item]) -> list[list[Item]]:
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(str(item.dtype), []).append(item)
    return [groups[k] for k in sorted(groups)]


def gather_to_owners(
    items: Sequence[Item],
    locals_: dict[int, torch.Tensor],
    rank: int,
    world_size: int,
    group: Any,
) -> dict[int, torch.Tensor]:
    """Whole tensors of the sharded ``items`` that ``rank`` owns, from every rank's piece.

    ``locals_[index]`` is this rank's piece of item ``index``.
    """
    out: dict[int, torch.Tensor] = {}
    for batch in _by_dtype(items):
        dtype, device = batch[0].dtype, batch[0].device
        send_parts: list[torch.Tensor] = []
        in_splits = []
        for r in range(world_size):
            mine = [locals_[it.index].reshape(-1) for it in batch if it.owner == r]
            send_parts.extend(mine)
            in_splits.append(sum(t.numel() for t in mine))
        owned = [it for it in batch if it.owner == rank]
        out_splits = [sum(it.info.local_numel(r) for it in owned) for r in range(world_size)]
        send = torch.cat(send_parts) if send_parts else torch.empty(0, dtype=dtype, device=device)
        recv = torch.empty(sum(out_splits), dtype=dtype, device=device)
        dist.all_to_all_single(recv, send.contiguous(), out_splits, in_splits, group=group)
        pieces: dict[int, list[torch.Tensor]] = {it.index: [] for it in owned}
        offset = 0
        for r in range(world_size):
            for it in owned:
                n = it.info.local_numel(r)
                pieces[it.index].append(recv[offset : offset + n].view(it.info.local_shape(r)))
                offset += n
        for it in owned:
            out[it.index] = torch.cat(pieces[it.index], dim=it.info.dim or 0)
    return out


def scatter_from_owners(
    items: Sequence[Item],
    wholes: dict[int, torch.Tensor],
    rank: int,
    world_size: int,
    group: Any,
) -> dict[int, torch.Tensor]:
    """This rank's piece of every sharded item; ``wholes`` holds the items ``rank`` owns."""
    out: dict[int, torch.Tensor] = {}
    for batch in _by_dtype(items):
        dtype, device = batch[0].dtype, batch[0].device
        owned = [it for it in batch if it.owner == rank]
        split = {it.index: it.info.split(wholes[it.index]) for it in owned}
        send_parts: list[torch.Tensor] = []
        in_splits = []
        for r in range(world_size):
            mine = [split[it.index][r].reshape(-1) for it in owned]
            send_parts.extend(mine)
            in_splits.append(sum(t.numel() for t in mine))
        out_splits = [
            sum(it.info.local_numel(rank) for it in batch if it.owner == q)
            for q in range(world_size)
        ]
        send = torch.cat(send_parts) if send_parts else torch.empty(0, dtype=dtype, device=device)
        recv = torch.empty(sum(out_splits), dtype=dtype, device=device)
        dist.all_to_all_single(recv, send.contiguous(), out_splits, in_splits, group=group)
        offset = 0
        for q in range(world_size):
            for it in batch:
                if it.owner != q:
                    continue
                n = it.info.local_numel(rank)
                out[it.index] = recv[offset : offset + n].view(it.info.local_shape(rank))
                offset += n
    return out


def broadcast_from_owners(
    items: Sequence[Item],
    wholes: dict[int, torch.Tensor],
    rank: int,
    world_size: int,
    group: Any,
) -> dict[int, torch.Tensor]:
    """Every replicated item, sent by its owner (``wholes`` holds the ones ``rank`` owns)."""
    out: dict[int, torch.Tensor] = {}
    for batch in _by_dtype(items):
        dtype, device = batch[0].dtype, batch[0].device
        for q in range(world_size):
            owned = [it for it in batch if it.owner == q]
            if not owned:
                continue
            sizes = [it.info.local_numel(q) for it in owned]
            if q == rank:
                flat = torch.cat([wholes[it.index].reshape(-1) for it in owned])
            else:
                flat = torch.empty(sum(sizes), dtype=dtype, device=device)
            dist.broadcast(flat, src=global_rank(group, q), group=group)
            offset = 0
            for it, n in zip(owned, sizes):
                if q == rank:
                    out[it.index] = wholes[it.index]
                else:
                    out[it.index] = flat[offset : offset + n].view(it.info.shape)
                offset += n
    return out
