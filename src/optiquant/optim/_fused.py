"""Adam through torch's own fused kernels, on the CPU.

Two entry points share the functional state layout of ``scale_by_adam``:

* :func:`fused_adam_step` updates the parameters in place, exactly as
  ``torch.optim.Adam(fused=True)`` does (the class optimizers use it);
* :func:`fused_adam_updates` writes the update ``-lr * m_hat / (sqrt(v_hat) + eps)`` into
  the gradient buffers in one pass, so ``update(..., inplace=True)`` costs one kernel.
  It runs the decoupled-weight-decay kernel with the gradient buffer as the "parameter"
  and a decay factor chosen so that ``1 - lr * weight_decay == 0`` exactly: the kernel
  then starts from zero and subtracts the Adam step, which is the update.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch

_FUSABLE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def can_fuse(*lists: list[torch.Tensor]) -> bool:
    """Whether these equally long tensor lists can go through one CPU fused kernel call."""
    if not lists or not lists[0]:
        return False
    groups = torch._C._group_tensors_by_device_and_dtype(cast(Any, list(lists)), False)
    if len(groups) != 1:
        return False
    ((device, dtype),) = groups.keys()
    return device.type == "cpu" and dtype in _FUSABLE_DTYPES and not lists[0][0].is_sparse


def has_dtensor(tensors: list[torch.Tensor]) -> bool:
    """Whether any of ``tensors`` is a ``DTensor`` (sharded by FSDP2 or tensor parallelism).

    torch's fused SGD and Adagrad kernels have no DTensor sharding rule; callers fall
    back to their multi-tensor path for such inputs.
    """
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(issubclass(kind, DTensor) for kind in set(map(type, tensors)))


def cancelling_decay(lr: float) -> float | None:
    """A weight decay ``wd`` with ``1 - lr * wd == 0`` exactly (in float64), or None."""
    if not (lr > 0 and math.isfinite(lr)):
        return None
    wd = 1.0 / lr
    for candidate in (wd, math.nextafter(wd, math.inf), math.nextafter(wd, 0.0)):
        if 1.0 - lr * candidate == 0.0:
            return candidate
    return None


def fused_adam_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    mus: list[torch.Tensor],
    nus: list[torch.Tensor],
    nu_maxs: list[torch.Tensor],
    counts: list[torch.Tensor],
    *,
    lr: float,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
) -> None:
    """One Adam/AdamW step on ``params`` in place (counters incremented here)."""
    torch._foreach_add_(counts, 1.0)
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    kernel(
        params,
        grads,
        mus,
        nus,
        nu_maxs if amsgrad else [],
        counts,
        lr=lr,
        beta1=b1,
        beta2=b2,
        weight_decay=weight_decay,
        eps=eps,
        amsgrad=amsgrad,
        maximize=maximize,
    )


def fused_adam_updates(
    grads: list[torch.Tensor],
    mus: list[torch.Tensor],
    nus: list[torch.Tensor],
    nu_maxs: list[torch.Tensor],
    counts: list[torch.Tensor],
    *,
    lr: float,
    b1: float,
    b2: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
) -> bool:
    """Overwrite ``grads`` with Adam's update ``-lr * direction``; False if not possible."""
    decay = cancelling_decay(lr)
    if decay is None:
        return False
    torch._foreach_add_(counts, 1.0)
    torch._fused_adamw_(
        grads,
        grads,
        mus,
        nus,
        nu_maxs if amsgrad else [],
        counts,
        lr=lr,
        beta1=b1,
        beta2=b2,
        weight_decay=decay,
        eps=eps,
        amsgrad=amsgrad,
        maximize=maximize,
    )
    return True


def as_float(value: Any) -> float | None:
    """``value`` as a float if it is a plain number, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def same_group(*lists: list[torch.Tensor]) -> bool:
    """Whether equally long tensor lists share one device and one floating dtype."""
    if not lists or not lists[0]:
        return False
    groups = torch._C._group_tensors_by_device_and_dtype(cast(Any, list(lists)), False)
    if len(groups) != 1:
        return False
    ((_, dtype),) = groups.keys()
    return dtype.is_floating_point and not lists[0][0].is_sparse
