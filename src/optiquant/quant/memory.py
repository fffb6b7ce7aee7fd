"""Reusable memory for large CPU outputs (decoded tensors, packed codes).

The first write to freshly allocated memory costs a page fault per page, and
the kernel zeroes each page before handing it over: for a 64 MiB output that
costs more than writing the values themselves. Outputs made with :func:`empty`
therefore come from a small cache of blocks whose previous tensors were
released; a block returns to the cache when the last tensor (or view, or numpy
array) using it is freed, and is handed out again only for a request of the
same size. Nothing else changes: the memory is uninitialised, as with
:func:`torch.empty`, and callers overwrite all of it.

The cache holds at most :func:`cache_limit` bytes (256 MiB by default, or the
``OPTIQUANT_CACHE_MB`` environment variable; 0 turns it off). Blocks that
would exceed it are freed instead. :func:`empty_cache` frees every cached
block now. Outputs under :data:`MIN_BYTES` use torch's allocator, which
recycles small blocks itself.

>>> out = empty(1 << 20, torch.float32)
>>> out.shape, out.dtype
(torch.Size([1048576]), torch.float32)
>>> address = out.data_ptr()
>>> del out  # the block is cached ...
>>> empty(1 << 20, torch.float32).data_ptr() == address or cache_limit() == 0
True
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import NamedTuple

import numpy as np
import torch

from optiquant._env import env_number

__all__ = [
    "MIN_BYTES",
    "Output",
    "cache_limit",
    "cached_bytes",
    "empty",
    "empty_cache",
    "new_output",
    "set_cache_limit",
]

MIN_BYTES = 1 << 20
"""Outputs smaller than this (in bytes) are plain torch tensors, never cached."""

ALIGN = 64
"""Every block starts on a 64-byte boundary (a cache line; streaming stores need it)."""

_NP_DTYPE = {
    torch.float16: np.float16,
    torch.bfloat16: np.int16,  # numpy has no bfloat16: same bits, viewed back in torch
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.uint8: np.uint8,
    torch.int8: np.int8,
    torch.int16: np.int16,
    torch.int32: np.int32,
    torch.int64: np.int64,
}


def _limit_from_env() -> int:
    return int(env_number("OPTIQUANT_CACHE_MB", 256.0, float) * 2**20)


class _Cache:
    """Released blocks by size; thread-safe, and re-entrant for collector callbacks."""

    def __init__(self, limit: int) -> None:
        self.lock = threading.RLock()
        self.free: dict[int, list[np.ndarray]] = {}
        self.total = 0
        self.limit = limit

    def take(self, nbytes: int) -> np.ndarray | None:
        with self.lock:
            blocks = self.free.get(nbytes)
            if not blocks:
                return None
            block = blocks.pop()
            self.total -= nbytes
            return block

    def give(self, block: np.ndarray) -> None:
        with self.lock:
            if self.total + block.nbytes <= self.limit:
                self.free.setdefault(block.nbytes, []).append(block)
                self.total += block.nbytes

    def clear(self) -> int:
        with self.lock:
            released, self.total = self.total, 0
            self.free = {}
        return released


_cache = _Cache(_limit_from_env())


def _after_fork_in_child() -> None:
    # A thread of the parent may have held the lock when it forked; that thread does
    # not exist in the child. The cached blocks are the child's own copies: keep them.
    _cache.lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Output(NamedTuple):
    """A new output tensor, and whether its memory was written before (a cached block:
    no page faults, so streaming stores pay off; see :func:`optiquant.quant.kernels.streams`)."""

    tensor: torch.Tensor
    reused: bool


def _aligned_block(nbytes: int) -> np.ndarray:
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes]


def new_output(numel: int, dtype: torch.dtype) -> Output:
    """An uninitialised 1-D CPU tensor of ``numel`` elements of ``dtype``, from the
    cache when a block of that size is there (see the module notes).

    >>> t, reused = new_output(10, torch.int64)
    >>> t.shape, reused
    (torch.Size([10]), False)
    """
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    nbytes = numel * dtype.itemsize
    if nbytes < MIN_BYTES or dtype not in _NP_DTYPE:
        return Output(torch.empty(numel, dtype=dtype), False)
    block = _cache.take(nbytes)
    reused = block is not None
    if block is None:
        block = _aligned_block(nbytes)
    array = block.view(_NP_DTYPE[dtype])
    # ``array`` lives exactly as long as a tensor, view or numpy array uses the memory
    weakref.finalize(array, _cache.give, block).atexit = False
    tensor = torch.from_numpy(array)
    return Output(tensor.view(dtype) if dtype == torch.bfloat16 else tensor, reused)


def empty(numel: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """:func:`new_output`'s tensor alone on the CPU; :func:`torch.empty` on other devices.

    >>> empty(3, torch.float32).shape
    torch.Size([3])
    """
    if torch.device(device).type != "cpu":
        return torch.empty(numel, dtype=dtype, device=device)
    return new_output(numel, dtype).tensor


def empty_cache() -> int:
    """Free every cached block now; returns the number of bytes released.

    >>> empty_cache() >= 0
    True
    """
    return _cache.clear()


def cached_bytes() -> int:
    """Bytes held in the cache now (blocks waiting for reuse).

    >>> cached_bytes() <= cache_limit()
    True
    """
    return _cache.total


def cache_limit() -> int:
    """The most bytes the cache holds.

    >>> cache_limit() >= 0
    True
    """
    return _cache.limit


def set_cache_limit(nbytes: int) -> None:
    """Hold at most ``nbytes`` bytes of released blocks (0: no cache); frees the cache.

    >>> old = cache_limit()
    >>> set_cache_limit(0); cached_bytes()
    0
    >>> set_cache_limit(old)
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be an int >= 0, got {nbytes!r}")
    with _cache.lock:
        _cache.clear()
        _cache.limit = nbytes
