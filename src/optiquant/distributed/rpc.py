"""Task-parallel calls over ``torch.distributed.rpc``: split the inputs, run, reduce.

A *partitioner* turns one call's arguments into several calls, each a tuple
``(worker, args, kwargs)``; a *reducer* turns the list of their results back into one.
:func:`parallelize` makes a function run that way: calling it splits the batch over the
RPC workers, runs the pieces with ``rpc_async`` (gradients flow back through
``torch.distributed.autograd``) and reduces the results. The function must be defined at
module level, so that every worker can import it.
"""

from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any, TypeVar

import torch

from optiquant.distributed.world import get_world_info, worker_name
from optiquant.tree import tree_flatten, tree_unflatten

__all__ = [
    "Parallelized",
    "TensorDimensionPartitioner",
    "auto_init_rpc",
    "batch_partitioner",
    "dim_partitioner",
    "exclusive_batch_partitioner",
    "mean_reducer",
    "parallelize",
    "parallelize_async",
    "parallelize_sync",
    "remote_async_call",
    "remote_sync_call",
    "sum_reducer",
]

F = TypeVar("F", bound=Callable[..., Any])
Call = tuple[Any, tuple[Any, ...], dict[str, Any]]
Partitioner = Callable[..., list[Call]]
Reducer = Callable[[list[Any]], Any]

#: ``timeout`` value meaning "the RPC agent's default timeout".
UNSET_TIMEOUT = -1.0


# --------------------------------------------------------------------------- set-up
def auto_init_rpc(
    worker_init_fn: Callable[[], Any] | None = None,
    worker_name_format: str = "worker{rank}",
    *,
    backend: Any = None,
    rpc_backend_options: Any = None,
) -> Callable[[F], F]:
    """Decorator: run the function inside an RPC session of the launcher's world.

    On entry it starts RPC on this process (named from ``worker_name_format``, rank and
    world size from the environment, see :func:`~optiquant.distributed.get_world_info`),
    runs ``worker_init_fn`` and waits for every worker; on exit it shuts RPC down
    gracefully, which waits until every worker has finished. The address comes from
    ``rpc_backend_options.init_method`` or from ``MASTER_ADDR``/``MASTER_PORT``.

    >>> import tempfile, torch.distributed.rpc as rpc
    >>> options = rpc.TensorPipeRpcBackendOptions(
    ...     init_method="file://" + tempfile.mkdtemp() + "/rendezvous")
    >>> @auto_init_rpc(rpc_backend_options=options)
    ... def main():
    ...     return rpc.get_worker_info().name
    >>> main()
    'worker0'
    """
    if worker_init_fn is not None and not callable(worker_init_fn):
        raise TypeError(f"worker_init_fn: expected a callable, got {worker_init_fn!r:.60}")
    worker_name(0, 1, worker_name_format)  # validates the format

    def decorator(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            import torch.distributed.rpc as rpc

            from optiquant.distributed.world import barrier

            info = get_world_info()
            name = worker_name(info.world_rank, info.world_size, worker_name_format)
            with warnings.catch_warnings():
                # torch's TensorPipe set-up calls a deprecated collective on a backend object.
                warnings.filterwarnings(
                    "ignore", message=r"You are using a Backend .* as a ProcessGroup"
                )
                rpc.init_rpc(
                    name,
                    backend=backend,
                    rank=info.world_rank,
                    world_size=info.world_size,
                    rpc_backend_options=rpc_backend_options,
                )
            try:
                if worker_init_fn is not None:
                    worker_init_fn()
                barrier()
                return func(*args, **kwargs)
            finally:
                rpc.shutdown(graceful=True)

        return wrapper  # type: ignore[return-value]

    return decorator


# ----------------------------------------------------------------------- partitioners
def _split_sizes(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


class TensorDimensionPartitioner:
    """Split every tensor argument along dimension ``dim`` into calls for the workers.

    Tensors whose size along ``dim`` is the batch size are split (all must agree);
    tensors with fewer dimensions, non-tensor arguments and the arguments named in
    ``shared`` (positions or keyword names) go whole to every call. By default the batch
    is cut into at most one contiguous chunk per worker (sizes differing by at most one);
    ``exclusive=True`` makes one call per index, dealt round-robin, with the dimension
    removed unless ``keepdim=True``. ``workers`` are RPC worker names or ids (default:
    every rank of the world).

    >>> import torch
    >>> part = TensorDimensionPartitioner(0, workers=["a", "b"])
    >>> [(w, a[0].shape, a[1]) for w, a, _ in part(torch.zeros(5, 2), 7)]
    [('a', torch.Size([3, 2]), 7), ('b', torch.Size([2, 2]), 7)]
    """

    def __init__(
        self,
        dim: int,
        *,
        exclusive: bool = False,
        keepdim: bool = False,
        workers: Sequence[str | int] | None = None,
        shared: Container[int | str] = (),
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise ValueError(f"dim: expected an int >= 0, got {dim!r}")
        if workers is not None:
            workers = list(workers)
            if not workers:
                raise ValueError("workers: expected at least one worker")
        self.dim = dim
        self.exclusive = bool(exclusive)
        self.keepdim = bool(keepdim)
        self.workers = workers
        self.shared = shared

    def _workers(self) -> list[str | int]:
        if self.workers is not None:
            return list(self.workers)
        return list(range(get_world_info().world_size))

    def __call__(self, *args: Any, **kwargs: Any) -> list[Call]:
        """The calls, as ``(worker, args, kwargs)`` tuples."""
        flat_args = [(a, k in self.shared) for k, a in enumerate(args)]
        flat_kwargs = [(v, k in self.shared) for k, v in kwargs.items()]
        batch: int | None = None
        leaves_of: list[tuple[list[Any], Any, bool]] = []
        for value, shared in flat_args + flat_kwargs:
            leaves, spec = tree_flatten(value)
            leaves_of.append((leaves, spec, shared))
            if shared:
                continue
            for leaf in leaves:
                if isinstance(leaf, torch.Tensor) and leaf.ndim > self.dim:
                    size = int(leaf.shape[self.dim])
                    if batch is None:
                        batch = size
                    elif size != batch:
                        raise ValueError(
                            f"arguments: tensors have sizes {batch} and {size} along dimension "
                            f"{self.dim}; all split tensors must agree"
                        )
        if batch is None:
            raise ValueError(f"arguments: no tensor argument has a dimension {self.dim} to split")
        if batch == 0:
            raise ValueError(f"arguments: the batch along dimension {self.dim} is empty")
        workers = self._workers()
        if self.exclusive:
            pieces = [(k, 1) for k in range(batch)]
        else:
            sizes = _split_sizes(batch, min(batch, len(workers)))
            starts = [sum(sizes[:k]) for k in range(len(sizes))]
            pieces = list(zip(starts, sizes))
        calls: list[Call] = []
        for n, (start, length) in enumerate(pieces):

            def cut(leaf: Any, start: int = start, length: int = length) -> Any:
                if not (isinstance(leaf, torch.Tensor) and leaf.ndim > self.dim):
                    return leaf
                if self.exclusive and not self.keepdim:
                    return leaf.select(self.dim, start)
                return leaf.narrow(self.dim, start, length)

            values = [
                tree_unflatten(spec, leaves if shared else [cut(x) for x in leaves])
                for leaves, spec, shared in leaves_of
            ]
            call_args = tuple(values[: len(args)])
            call_kwargs = dict(zip(kwargs.keys(), values[len(args) :]))
            calls.append((workers[n % len(workers)], call_args, call_kwargs))
        return calls


def dim_partitioner(
    dim: int = 0,
    *,
    exclusive: bool = False,
    keepdim: bool = True,
    workers: Sequence[str | int] | None = None,
    shared: Container[int | str] = (),
) -> TensorDimensionPartitioner:
    """A :class:`TensorDimensionPartitioner` (``keepdim`` defaults to True here).

    >>> import torch
    >>> calls = dim_partitioner(1, workers=[0, 1])(torch.zeros(2, 4))
    >>> [(w, a[0].shape) for w, a, _ in calls]
    [(0, torch.Size([2, 2])), (1, torch.Size([2, 2]))]
    """
    return TensorDimensionPartitioner(
        dim, exclusive=exclusive, keepdim=keepdim, workers=workers, shared=shared
    )


def batch_partitioner(*args: Any, **kwargs: Any) -> list[Call]:
    """Split along dimension 0 into at most one chunk per worker of the world.

    >>> import torch
    >>> len(batch_partitioner(torch.zeros(4, 3))) <= 4
    True
    """
    return TensorDimensionPartitioner(0, keepdim=True)(*args, **kwargs)


def exclusive_batch_partitioner(*args: Any, **kwargs: Any) -> list[Call]:
    """One call per sample along dimension 0 (dimension removed), dealt round-robin.

    >>> import torch
    >>> [a[0].shape for _, a, _ in exclusive_batch_partitioner(torch.zeros(3, 2))]
    [torch.Size([2]), torch.Size([2]), torch.Size([2])]
    """
    return TensorDimensionPartitioner(0, exclusive=True, keepdim=False)(*args, **kwargs)


# ---------------------------------------------------------------------------- reducers
def _check_results(results: Iterable[Any]) -> list[Any]:
    out = list(results)
    if not out:
        raise ValueError("results: expected at least one result to reduce")
    return out


def _combine(results: list[Any], fn: Callable[[list[Any]], Any]) -> Any:
    first, spec = tree_flatten(results[0])
    columns = [first]
    for k, r in enumerate(results[1:], start=1):
        leaves, other = tree_flatten(r)
        if other != spec:
            raise ValueError(f"results: result {k} has structure {other}, expected {spec}")
        columns.append(leaves)
    out: list[Any] = []
    for values in zip(*columns):
        if all(v is None for v in values):
            out.append(None)
        elif all(isinstance(v, torch.Tensor) for v in values):
            out.append(fn(list(values)))
        elif all(isinstance(v, numbers.Number) and not isinstance(v, bool) for v in values):
            out.append(fn([torch.tensor(v, dtype=torch.float64) for v in values]).item())
        else:
            raise TypeError("results: leaves must be all tensors, all numbers or all None")
    return tree_unflatten(spec, out)


def sum_reducer(results: Iterable[Any]) -> Any:
    """Leaf-wise sum of the results (trees of tensors or numbers).

    >>> import torch
    >>> sum_reducer([torch.tensor(1.0), torch.tensor(2.5)])
    tensor(3.5000)
    """
    return _combine(_check_results(results), lambda xs: torch.stack(xs).sum(0))


def mean_reducer(results: Iterable[Any]) -> Any:
    """Leaf-wise mean of the results (trees of tensors or numbers).

    Each result counts once: chunks of equal size give the mean over the whole batch.

    >>> import torch
    >>> mean_reducer([{"loss": torch.tensor(1.0)}, {"loss": torch.tensor(2.0)}])
    {'loss': tensor(1.5000)}
    """
    return _combine(_check_results(results), lambda xs: torch.stack(xs).mean(0))


# ------------------------------------------------------------------------------- calls
def _run_local(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    target = func.func if isinstance(func, Parallelized) else func
    return target(*args, **kwargs)


def _to(worker: str | int) -> Any:
    import torch.distributed.rpc as rpc

    if isinstance(worker, str):
        return worker
    for info in rpc._get_current_rpc_agent().get_worker_infos():
        if info.id == worker:
            return info
    raise ValueError(f"worker: no RPC worker has id {worker}")


def remote_async_call(
    func: Callable[..., Any],
    *,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    partitioner: Partitioner | None = None,
    reducer: Reducer | None = None,
    timeout: float = UNSET_TIMEOUT,
) -> Any:
    """Start ``func`` on the workers chosen by ``partitioner``; a ``Future`` of the result.

    The future's value is ``reducer(results)``, or the list of results without a reducer.
    ``partitioner`` defaults to :func:`batch_partitioner`; ``func`` must be importable by
    the workers (defined at module level). In a one-process session:

    >>> import tempfile, torch, torch.distributed.rpc as rpc
    >>> from optiquant.distributed import auto_init_rpc
    >>> options = rpc.TensorPipeRpcBackendOptions(
    ...     init_method="file://" + tempfile.mkdtemp() + "/rendezvous")
    >>> run = lambda: remote_async_call(torch.square, args=(torch.arange(3.0),)).wait()
    >>> auto_init_rpc(rpc_backend_options=options)(run)()
    [tensor([0., 1., 4.])]
    """
    import torch.distributed.rpc as rpc

    part = batch_partitioner if partitioner is None else partitioner
    calls = part(*(args or ()), **(kwargs or {}))
    if not calls:
        raise ValueError("partitioner: returned no calls")
    futures = [
        rpc.rpc_async(_to(worker), _run_local, args=(func, tuple(a), dict(k)), timeout=timeout)
        for worker, a, k in calls
    ]
    everything = torch.futures.collect_all(futures)

    def finish(done: Any) -> Any:
        results = [f.wait() for f in done.wait()]
        return results if reducer is None else reducer(results)

    return everything.then(finish)


def remote_sync_call(
    func: Callable[..., Any],
    *,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    partitioner: Partitioner | None = None,
    reducer: Reducer | None = None,
    timeout: float = UNSET_TIMEOUT,
) -> Any:
    """Run ``func`` on the workers chosen by ``partitioner`` and return the reduced result.

    >>> import tempfile, torch, torch.distributed.rpc as rpc
    >>> from optiquant.distributed import auto_init_rpc
    >>> options = rpc.TensorPipeRpcBackendOptions(
    ...     init_method="file://" + tempfile.mkdtemp() + "/rendezvous")
    >>> x = torch.arange(4.0).reshape(2, 2)
    >>> run = lambda: remote_sync_call(
    ...     torch.sum, args=(x,), partitioner=exclusive_batch_partitioner, reducer=sum_reducer)
    >>> auto_init_rpc(rpc_backend_options=options)(run)()
    tensor(6.)
    """
    return remote_async_call(
        func, args=args, kwargs=kwargs, partitioner=partitioner, reducer=reducer, timeout=timeout
    ).wait()


def _resolve(module: str, qualname: str) -> Any:
    import importlib

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class Parallelized:
    """A function whose calls are split over the RPC workers (see :func:`parallelize`).

    Calling it partitions the arguments, runs :attr:`func` on each piece remotely and
    reduces the results; :attr:`func` itself runs in this process. It travels to the
    workers by name, so the decorated function must be defined at module level.

    >>> import torch
    >>> total = Parallelized(torch.sum, batch_partitioner, sum_reducer, UNSET_TIMEOUT, True)
    >>> total.func(torch.ones(3))
    tensor(3.)
    """

    def __init__(
        self,
        func: Callable[..., Any],
        partitioner: Partitioner | None,
        reducer: Reducer | None,
        timeout: float,
        wait: bool,
    ) -> None:
        if not callable(func):
            raise TypeError(f"func: expected a callable, got {func!r:.60}")
        if partitioner is not None and not callable(partitioner):
            raise TypeError(f"partitioner: expected a callable, got {partitioner!r:.60}")
        if reducer is not None and not callable(reducer):
            raise TypeError(f"reducer: expected a callable, got {reducer!r:.60}")
        qualname = getattr(func, "__qualname__", "")
        if "<locals>" in qualname or "<lambda>" in qualname or not qualname:
            raise ValueError(
                f"func: {qualname or func!r} is not defined at module level; the RPC workers "
                "import parallelized functions by name"
            )
        functools.update_wrapper(self, func)
        self._where = (str(getattr(func, "__module__", "")), str(qualname))
        #: The undecorated function (what each worker runs on its share).
        self.func = func
        self.partitioner = partitioner
        self.reducer = reducer
        self.timeout = timeout
        self.wait = wait

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        future = remote_async_call(
            self,
            args=args,
            kwargs=kwargs,
            partitioner=self.partitioner,
            reducer=self.reducer,
            timeout=self.timeout,
        )
        return future.wait() if self.wait else future

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return _resolve, self._where


def parallelize(
    partitioner: Partitioner | None = None,
    reducer: Reducer | None = None,
    timeout: float = UNSET_TIMEOUT,
) -> Callable[[Callable[..., Any]], Parallelized]:
    """Decorator: each call splits its arguments over the RPC workers and reduces the results.

    Defaults: :func:`batch_partitioner` and :func:`mean_reducer`. The decorated function
    must live at module level (workers import it by name). In a one-process session:

    >>> import tempfile, torch, torch.distributed.rpc as rpc
    >>> from optiquant.distributed import auto_init_rpc
    >>> options = rpc.TensorPipeRpcBackendOptions(
    ...     init_method="file://" + tempfile.mkdtemp() + "/rendezvous")
    >>> relu = parallelize(reducer=sum_reducer)(torch.nn.functional.relu)
    >>> auto_init_rpc(rpc_backend_options=options)(lambda: relu(torch.tensor([-1.0, 2.0])))()
    tensor([0., 2.])
    """
    chosen = mean_reducer if reducer is None else reducer
    return lambda func: Parallelized(func, partitioner, chosen, timeout, wait=True)


parallelize_sync = parallelize


def parallelize_async(
    partitioner: Partitioner | None = None,
    reducer: Reducer | None = None,
    timeout: float = UNSET_TIMEOUT,
) -> Callable[[Callable[..., Any]], Parallelized]:
    """Like :func:`parallelize`, but calls return a ``torch.futures.Future``.

    >>> import tempfile, torch, torch.distributed.rpc as rpc
    >>> from optiquant.distributed import auto_init_rpc
    >>> options = rpc.TensorPipeRpcBackendOptions(
    ...     init_method="file://" + tempfile.mkdtemp() + "/rendezvous")
    >>> relu = parallelize_async(reducer=sum_reducer)(torch.nn.functional.relu)
    >>> auto_init_rpc(rpc_backend_options=options)(lambda: relu(torch.ones(2)).wait())()
    tensor([1., 1.])
    """
    chosen = mean_reducer if reducer is None else reducer
    return lambda func: Parallelized(func, partitioner, chosen, timeout, wait=False)
