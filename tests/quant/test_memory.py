"""The output cache hands back released blocks, and only those, within its limit."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
import torch

from optiquant.quant import memory

MiB = 1 << 20


@pytest.fixture(autouse=True)
def own_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A private 16 MiB cache per test."""
    monkeypatch.setattr(memory, "_cache", memory._Cache(16 * MiB))


def test_block_returns_only_when_every_user_is_gone() -> None:
    t = memory.empty(MiB // 4, torch.float32)
    address = t.data_ptr()
    assert address % memory.ALIGN == 0
    view = t[10:]
    array = view.numpy()
    del t
    assert memory.cached_bytes() == 0  # the view still uses it
    del view
    assert memory.cached_bytes() == 0  # and the numpy array
    array[:] = 1.0
    del array
    assert memory.cached_bytes() == MiB
    again = memory.new_output(MiB // 4, torch.float32)
    assert again.reused and again.tensor.data_ptr() == address
    assert memory.cached_bytes() == 0


def test_only_same_size_requests_reuse_a_block() -> None:
    del_me = memory.empty(MiB // 4, torch.float32)
    del del_me
    other = memory.new_output(MiB // 2, torch.float32)
    assert not other.reused and memory.cached_bytes() == MiB
    same_bytes = memory.new_output(MiB // 8, torch.float64)  # same size, other dtype
    assert same_bytes.reused and same_bytes.tensor.dtype == torch.float64


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int64]
)
def test_outputs_have_the_requested_dtype_and_size(dtype: torch.dtype) -> None:
    numel = 2 * MiB // dtype.itemsize + 3
    t = memory.empty(numel, dtype)
    assert t.dtype == dtype and t.shape == (numel,) and t.is_contiguous()
    t.fill_(1)
    assert torch.equal(t, torch.ones(numel, dtype=dtype))
    del t
    assert memory.cached_bytes() == numel * dtype.itemsize


def test_small_outputs_and_unsupported_dtypes_are_never_cached() -> None:
    small = memory.new_output(100, torch.float32)
    assert not small.reused
    odd = memory.new_output(MiB, torch.complex64)
    assert odd.tensor.dtype == torch.complex64
    del small, odd
    assert memory.cached_bytes() == 0


def test_the_limit_is_respected_and_zero_turns_the_cache_off() -> None:
    blocks = [memory.empty(6 * MiB // 4, torch.float32) for _ in range(3)]
    del blocks
    assert memory.cached_bytes() == 12 * MiB  # the third 6 MiB block would pass 16 MiB
    memory.set_cache_limit(0)
    assert memory.cached_bytes() == 0 and memory.cache_limit() == 0
    t = memory.empty(MiB, torch.float32)
    del t
    assert memory.cached_bytes() == 0
    memory.set_cache_limit(4 * MiB)
    t = memory.empty(MiB, torch.float32)
    del t
    assert memory.cached_bytes() == 4 * MiB
    assert memory.empty_cache() == 4 * MiB and memory.cached_bytes() == 0


def test_bad_arguments_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="nbytes"):
        memory.set_cache_limit(-1)
    with pytest.raises(ValueError, match="nbytes"):
        memory.set_cache_limit(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="numel"):
        memory.empty(-1, torch.float32)
    monkeypatch.setenv("OPTIQUANT_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="OPTIQUANT_CACHE_MB"):
        memory._limit_from_env()
    monkeypatch.setenv("OPTIQUANT_CACHE_MB", "-2")
    with pytest.raises(ValueError, match="OPTIQUANT_CACHE_MB"):
        memory._limit_from_env()
    monkeypatch.setenv("OPTIQUANT_CACHE_MB", "1.5")
    assert memory._limit_from_env() == 3 * MiB // 2


def test_threads_never_share_a_block() -> None:
    errors: list[str] = []
    n = MiB // 4

    def worker(value: float) -> None:
        for _ in range(50):
            t = memory.empty(n, torch.float32)
            t.fill_(value)
            if not bool((t == value).all()):  # another thread wrote into it
                errors.append(f"block shared at value {value}")
            del t

    threads = [threading.Thread(target=worker, args=(float(i),)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert memory.cached_bytes() <= memory.cache_limit()
    assert memory.cached_bytes() % MiB == 0


def test_the_cached_block_is_the_tensors_memory() -> None:
    t = memory.empty(MiB // 4, torch.float32)
    t.copy_(torch.arange(MiB // 4, dtype=torch.float32))
    expected = t.clone()
    address = t.data_ptr()
    del t
    block = memory._cache.free[MiB][0]
    assert block.ctypes.data == address
    assert np.array_equal(block.view(np.float32), expected.numpy())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_allocates_while_a_parent_thread_held_the_lock() -> None:
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with memory._cache.lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: the holder thread does not exist here
            signal.alarm(10)  # a deadlock ends the child instead of the test run
            try:
                t = memory.empty(MiB // 4, torch.float32)
                del t
                os._exit(0 if memory.cached_bytes() == MiB else 3)
            except BaseException:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        holder.join()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
