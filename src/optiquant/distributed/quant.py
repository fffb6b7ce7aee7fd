"""Writing a quantized file from a distributed model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from optiquant.distributed._exchange import comm_device, global_rank
from optiquant.distributed.fsdp import full_params

__all__ = ["save_quantized"]


def _model_of(obj: Any) -> nn.Module:
    from optiquant.quant.base import BaseQuantizer

    if isinstance(obj, BaseQuantizer):
        return obj.model
    if isinstance(obj, nn.parallel.DistributedDataParallel):
        return obj.module
    if isinstance(obj, nn.Module):
        return obj
    raise TypeError(
        f"obj: expected a quantizer or a model, got {type(obj).__name__} (a state dict "
        "is already whole: write it with optiquant.io.save_quantized)"
    )


def save_quantized(
    obj: Any,
    path: str | os.PathLike[str],
    *,
    rank: int = 0,
    process_group: Any = None,
) -> Path | None:
    """Write ``obj``'s quantized file on one rank, from a DDP, FSDP2 or local model.

    ``obj`` is a quantizer or a model, as for :func:`optiquant.io.save_quantized`.
    Parameters sharded by ``fully_shard`` are gathered first, so rank ``rank`` writes
    exactly the file a single process holding the same weights writes. Collective when
    ``torch.distributed`` is initialised; returns the path on the writing rank and
    ``None`` on the others.

    >>> import tempfile, torch
    >>> from optiquant.quant import UniformQuantizer
    >>> model = torch.nn.Linear(64, 64)
    >>> quantizer = UniformQuantizer(model, bits=4, min_size=0)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save_quantized(quantizer, tmp + "/m.safetensors").name
    'm.safetensors'
    """
    from optiquant.io import save_quantized as write

    model = _model_of(obj)
    target = obj.module if isinstance(obj, nn.parallel.DistributedDataParallel) else obj
    active = dist.is_available() and dist.is_initialized()
    me = dist.get_rank(process_group) if active else 0
    size = dist.get_world_size(process_group) if active else 1
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < size:
        raise ValueError(f"rank: expected an int in [0, {size}), got {rank!r}")
    written: Path | None = None
    error: BaseException | None = None
    with full_params(model), torch.no_grad():
        if me == rank:
            try:
                written = write(target, path)
            except BaseException as exc:  # re-raised after the others are released
                error = exc
        if active:
            flag = torch.tensor([0 if error is None else 1], device=comm_device(process_group))
            dist.broadcast(flag, src=global_rank(process_group, rank), group=process_group)
            if error is None and int(flag) != 0:
                raise RuntimeError(f"save_quantized failed on rank {rank}")
    if error is not None:
        raise error
    return written
