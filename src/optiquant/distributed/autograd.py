"""Distributed autograd helpers: gradients through RPC calls.

Inside ``with context() as context_id:`` every RPC call records how to send gradients
back. :func:`backward` and :func:`grad` run the backward pass across the workers and
hand the gradients over the way local autograd does (``.grad`` or a tuple).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["backward", "context", "get_gradients", "grad", "is_available"]

_GRAD_LOCK = threading.Lock()


def is_available() -> bool:
    """Whether ``torch.distributed.autograd`` exists in this build.

    >>> isinstance(is_available(), bool)
    True
    """
    if not torch.distributed.is_available():
        return False
    try:
        import torch.distributed.autograd as dist_autograd
    except ImportError:  # pragma: no cover - depends on the torch build
        return False
    return hasattr(dist_autograd, "context")


def context() -> Any:
    """A distributed autograd context (``with context() as context_id: ...``).

    >>> import tempfile, torch, torch.distributed.rpc as rpc
    >>> from optiquant.distributed import auto_init_rpc, autograd
    >>> options = rpc.TensorPipeRpcBackendOptions(
    ...     init_method="file://" + tempfile.mkdtemp() + "/rendezvous")
    >>> def run():
    ...     with autograd.context() as context_id:
    ...         return isinstance(context_id, int)
    >>> auto_init_rpc(rpc_backend_options=options)(run)()
    True
    """
    import torch.distributed.autograd as dist_autograd

    return dist_autograd.context()


def get_gradients(context_id: int) -> dict[torch.Tensor, torch.Tensor]:
    """The gradients accumulated in ``context_id``, keyed by tensor.

    >>> import tempfile, torch, torch.distributed.rpc as rpc
    >>> from optiquant.distributed import auto_init_rpc, autograd
    >>> options = rpc.TensorPipeRpcBackendOptions(
    ...     init_method="file://" + tempfile.mkdtemp() + "/rendezvous")
    >>> x = torch.ones(2, requires_grad=True)
    >>> def run():
    ...     with autograd.context() as context_id:
    ...         y = rpc.rpc_sync("worker0", torch.mul, args=(x, 3.0))
    ...         torch.distributed.autograd.backward(context_id, [y.sum()])
    ...         return autograd.get_gradients(context_id)[x]
    >>> auto_init_rpc(rpc_backend_options=options)(run)()
    tensor([3., 3.])
    """
    import torch.distributed.autograd as dist_autograd

    return dist_autograd.get_gradients(context_id)


def _as_list(tensors: torch.Tensor | Sequence[torch.Tensor], name: str) -> list[torch.Tensor]:
    items = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
    if not items:
        raise ValueError(f"{name}: expected at least one tensor")
    for k, t in enumerate(items):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: entry {k} must be a tensor, got {type(t).__name__}")
    return items


def backward(
    context_id: int,
    tensors: torch.Tensor | Sequence[torch.Tensor],
    retain_graph: bool = False,
    inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> None:
    """Backpropagate the scalar ``tensors`` across workers and add the gradients to ``.grad``.

    Only ``inputs`` receive gradients when given, else every tensor that got one in
    this context.

    >>> import tempfile, torch, torch.distributed.rpc as rpc
    >>> from optiquant.distributed import auto_init_rpc, autograd
    >>> options = rpc.TensorPipeRpcBackendOptions(
    ...     init_method="file://" + tempfile.mkdtemp() + "/rendezvous")
    >>> x = torch.ones(2, requires_grad=True)
    >>> def run():
    ...     with autograd.context() as context_id:
    ...         y = rpc.rpc_sync("worker0", torch.mul, args=(x, 3.0))
    ...         autograd.backward(context_id, y.sum())
    >>> auto_init_rpc(rpc_backend_options=options)(run)()
    >>> x.grad
    tensor([3., 3.])
    """
    import torch.distributed.autograd as dist_autograd

    roots = _as_list(tensors, "tensors")
    for k, t in enumerate(roots):
        if t.numel() != 1:
            raise ValueError(f"tensors: entry {k} must be a scalar, got shape {tuple(t.shape)}")
    dist_autograd.backward(context_id, roots, retain_graph=retain_graph)
    grads = dist_autograd.get_gradients(context_id)
    targets = list(grads) if inputs is None else _as_list(inputs, "inputs")
    with _GRAD_LOCK:
        for t in targets:
            g = grads.get(t)
            if g is None:
                continue
            if t.grad is None:
                t.grad = g.detach().clone()
            else:
                t.grad.add_(g)


def grad(
    context_id: int,
    outputs: torch.Tensor | Sequence[torch.Tensor],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    retain_graph: bool = False,
    allow_unused: bool = False,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of the scalar ``outputs`` with respect to ``inputs``, across workers.

    Raises ``RuntimeError`` when an input got no gradient, unless ``allow_unused``.

    >>> import tempfile, torch, torch.distributed.rpc as rpc
    >>> from optiquant.distributed import auto_init_rpc, autograd
    >>> options = rpc.TensorPipeRpcBackendOptions(
    ...     init_method="file://" + tempfile.mkdtemp() + "/rendezvous")
    >>> x = torch.ones(2, requires_grad=True)
    >>> def run():
    ...     with autograd.context() as context_id:
    ...         y = rpc.rpc_sync("worker0", torch.mul, args=(x, 3.0))
    ...         return autograd.grad(context_id, y.sum(), [x])
    >>> auto_init_rpc(rpc_backend_options=options)(run)()
    (tensor([3., 3.]),)
    """
    import torch.distributed.autograd as dist_autograd

    roots = _as_list(outputs, "outputs")
    wrt = _as_list(inputs, "inputs")
    dist_autograd.backward(context_id, roots, retain_graph=retain_graph)
    grads = dist_autograd.get_gradients(context_id)
    out: list[torch.Tensor | None] = []
    for k, t in enumerate(wrt):
        g = grads.get(t)
        if g is None and not allow_unused:
            raise RuntimeError(
                f"inputs: entry {k} received no gradient (pass allow_unused=True to get None)"
            )
        out.append(g)
    return tuple(out)
