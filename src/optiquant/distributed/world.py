"""Who am I in the job: ranks and sizes from the launcher's environment, rank guards.

``torchrun`` (and most launchers) describe a process with four environment variables:
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``. The helpers here read
them (a plain ``python script.py`` is rank 0 of a world of 1), name RPC workers, and
restrict functions to some ranks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import torch

from optiquant._env import env_number

__all__ = [
    "WorldInfo",
    "barrier",
    "get_local_rank",
    "get_local_world_size",
    "get_rank",
    "get_worker_id",
    "get_world_info",
    "get_world_rank",
    "get_world_size",
    "is_available",
    "not_on_rank",
    "on_rank",
    "rank_non_zero_only",
    "rank_zero_only",
    "worker_name",
]

F = TypeVar("F", bound=Callable[..., Any])


def is_available() -> bool:
    """Whether this torch build has ``torch.distributed`` and its RPC framework.

    >>> isinstance(is_available(), bool)
    True
    """
    if not torch.distributed.is_available():
        return False
    try:
        import torch.distributed.rpc as rpc
    except ImportError:  # pragma: no cover - depends on the torch build
        return False
    return bool(rpc.is_available())


def _env_int(name: str, default: int) -> int:
    return env_number(name, default, int)


def worker_name(rank: int, world_size: int, name_format: str = "worker{rank}") -> str:
    """The RPC name of ``rank``: ``name_format`` with ``{rank}`` zero-padded to the width
    of the largest rank, so names sort in rank order.

    >>> worker_name(3, 12)
    'worker03'
    >>> worker_name(0, 1, "trainer-{rank}")
    'trainer-0'
    """
    if "{rank}" not in name_format:
        raise ValueError(f"name_format: expected a '{{rank}}' field, got {name_format!r}")
    width = len(str(max(world_size - 1, 0)))
    return name_format.replace("{rank}", f"{rank:0{width}d}")


class WorldInfo(NamedTuple):
    """This process's place in the job (see :func:`get_world_info`)."""

    world_rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def rank(self) -> int:
        """Same as :attr:`world_rank`."""
        return self.world_rank

    @property
    def worker_name(self) -> str:
        """The default RPC worker name of this process (``worker0``, ``worker1``...)."""
        return worker_name(self.world_rank, self.world_size)


def get_world_info() -> WorldInfo:
    """Rank and sizes of this process, read from the launcher's environment variables.

    Missing variables mean a single process (rank 0 of 1). Raises ``ValueError`` for a
    malformed or inconsistent environment.

    >>> info = get_world_info()
    >>> 0 <= info.rank < info.world_size
    True
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size)
    local_rank = _env_int("LOCAL_RANK", rank % max(local_world_size, 1))
    if world_size < 1:
        raise ValueError(f"environment variable WORLD_SIZE: expected >= 1, got {world_size}")
    if rank >= world_size:
        raise ValueError(f"environment variable RANK={rank} is not below WORLD_SIZE={world_size}")
    if local_world_size < 1 or local_rank >= local_world_size:
        raise ValueError(
            f"environment variables LOCAL_RANK={local_rank} and LOCAL_WORLD_SIZE="
            f"{local_world_size} are inconsistent"
        )
    return WorldInfo(rank, world_size, local_rank, local_world_size)


def get_world_rank() -> int:
    """Global rank of this process (0 when not launched by a distributed launcher).

    >>> get_world_rank() >= 0
    True
    """
    return get_world_info().world_rank


get_rank = get_world_rank


def get_world_size() -> int:
    """Number of processes in the job (1 when not launched by a distributed launcher).

    >>> get_world_size() >= 1
    True
    """
    return get_world_info().world_size


def get_local_rank() -> int:
    """Rank of this process on its machine.

    >>> get_local_rank() >= 0
    True
    """
    return get_world_info().local_rank


def get_local_world_size() -> int:
    """Number of processes on this machine.

    >>> get_local_world_size() >= 1
    True
    """
    return get_world_info().local_world_size


def get_worker_id(id: str | int | None = None) -> int:
    """The RPC worker id of the worker named (or numbered) ``id``; this worker's by default.

    Needs an initialised RPC framework (``auto_init_rpc`` or ``rpc.init_rpc``).

    >>> import tempfile, torch.distributed.rpc as rpc
    >>> from optiquant.distributed import auto_init_rpc
    >>> options = rpc.TensorPipeRpcBackendOptions(
    ...     init_method="file://" + tempfile.mkdtemp() + "/rendezvous")
    >>> auto_init_rpc(rpc_backend_options=options)(lambda: get_worker_id("worker0"))()
    0
    """
    import torch.distributed.rpc as rpc

    info = rpc.get_worker_info() if id is None else rpc.get_worker_info(_worker_name_of(id))
    return int(info.id)


def _worker_name_of(worker: str | int) -> str:
    if isinstance(worker, str):
        return worker
    import torch.distributed.rpc as rpc

    for info in rpc._get_current_rpc_agent().get_worker_infos():
        if info.id == worker:
            return str(info.name)
    raise ValueError(f"worker: no RPC worker has id {worker}")


def barrier(worker_names: Iterable[str] | None = None) -> None:
    """Wait until every RPC worker (or every one in ``worker_names``) reaches this point.

    Needs an initialised RPC framework.

    >>> import tempfile, torch.distributed.rpc as rpc
    >>> from optiquant.distributed import auto_init_rpc
    >>> options = rpc.TensorPipeRpcBackendOptions(
    ...     init_method="file://" + tempfile.mkdtemp() + "/rendezvous")
    >>> auto_init_rpc(rpc_backend_options=options)(barrier)()
    """
    import torch.distributed.rpc as rpc

    names = None if worker_names is None else set(worker_names)
    if names is None:
        names = {info.name for info in rpc._get_current_rpc_agent().get_worker_infos()}
    rpc.api._barrier(sorted(names))


def _rank_guard(keep: Callable[[int], bool], what: str) -> Callable[[F], F]:
    def decorator(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if keep(get_world_rank()):
                return func(*args, **kwargs)
            return None

        wrapper.__doc__ = (func.__doc__ or "") + f"\n\n(Runs {what}; returns None elsewhere.)"
        return wrapper  # type: ignore[return-value]

    return decorator


def _check_ranks(ranks: tuple[int, ...]) -> frozenset[int]:
    if not ranks:
        raise ValueError("ranks: expected at least one rank")
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise TypeError(f"ranks: expected non-negative ints, got {r!r}")
    return frozenset(ranks)


def on_rank(*ranks: int) -> Callable[[F], F]:
    """Decorator: the function runs only on the given global ranks (None elsewhere).

    >>> @on_rank(0)
    ... def hello():
    ...     return "hi"
    >>> hello() if get_world_rank() == 0 else "hi"
    'hi'
    """
    keep = _check_ranks(ranks)
    return _rank_guard(keep.__contains__, f"on ranks {sorted(keep)}")


def not_on_rank(*ranks: int) -> Callable[[F], F]:
    """Decorator: the function runs on every global rank except the given ones.

    >>> @not_on_rank(0)
    ... def helper():
    ...     return "busy"
    >>> helper() is None if get_world_rank() == 0 else True
    True
    """
    skip = _check_ranks(ranks)
    return _rank_guard(lambda r: r not in skip, f"on every rank except {sorted(skip)}")


def rank_zero_only(func: F) -> F:
    """Decorator: run on global rank 0 only.

    >>> rank_zero_only(lambda: 1)() in (1, None)
    True
    """
    return on_rank(0)(func)


def rank_non_zero_only(func: F) -> F:
    """Decorator: run on every global rank but 0.

    >>> rank_non_zero_only(lambda: 1)() in (1, None)
    True
    """
    return not_on_rank(0)(func)
