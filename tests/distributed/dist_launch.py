"""Run a test body in 2 local processes (gloo on CPU, file:// rendezvous, bounded waits).

``run_workers(body, tmp_path, *args)`` spawns ``world_size`` processes; each one starts a
gloo process group (unless ``rpc=True``, where the body starts RPC itself), runs
``body(rank, world_size, tmp_path, *args)`` and leaves cleanly. A failing rank fails the
test with its traceback; a run longer than ``timeout`` seconds is killed and fails.
Results travel through files under ``tmp_path`` (``torch.save``/``torch.load`` with
``weights_only=True``).
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

#: Seconds any single collective may wait before it fails (instead of hanging the test).
COLLECTIVE_TIMEOUT = 30.0


def _entry(
    rank: int, world_size: int, body: Callable[..., Any], tmp: str, rpc: bool, args: tuple
) -> None:
    import warnings

    torch.set_num_threads(1)
    # torch's own distributed set-up warns about its deprecated internals on CPU.
    warnings.filterwarnings("ignore", message=r"You are using a Backend .* as a ProcessGroup")
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    if rpc:
        body(rank, world_size, Path(tmp), *args)
        return
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/rendezvous",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT),
    )
    try:
        body(rank, world_size, Path(tmp), *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_workers(
    body: Callable[..., Any],
    tmp_path: Path,
    *args: Any,
    world_size: int = 2,
    rpc: bool = False,
    timeout: float = 90.0,
) -> None:
    """Run ``body`` on ``world_size`` spawned processes; raise if one fails or time runs out."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        context = mp.start_processes(
            _entry,
            args=(world_size, body, str(tmp_path), rpc, args),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"distributed test did not finish within {timeout:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join(5)


def save(obj: Any, path: Path) -> None:
    """Write a tree of tensors for the parent test process."""
    torch.save(obj, path)


def load(path: Path) -> Any:
    """Read what a worker wrote (tensors only)."""
    return torch.load(path, weights_only=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
