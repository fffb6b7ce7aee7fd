"""Living with FSDP2's parameter replacement: whole-parameter views and an order check.

``fully_shard`` replaces each parameter of a module by a new sharded ``DTensor``
parameter. Two consequences are handled here:

* :func:`full_params` lets code that reads ``module.weight`` (a quantizer encoding
  weights, an exporter) see whole tensors for a while;
* :func:`check_optimizer` detects an optimizer built before ``fully_shard``, which
  holds the old parameters and would silently never update the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["check_optimizer", "fsdp_modules", "full_params"]


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The submodules of ``model`` (itself included) sharded by ``fully_shard``.

    >>> fsdp_modules(torch.nn.Linear(2, 2))
    []
    """
    if not torch.distributed.is_available():
        return []
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def full_params(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, every FSDP2-sharded parameter of ``model`` is a whole tensor.

    Collective (every rank enters and leaves it together). The whole parameters are
    read-only copies: changes made to them inside the block are lost. A model
    without ``fully_shard`` is left as it is.

    >>> model = torch.nn.Linear(2, 2)
    >>> with full_params(model) as m:
    ...     m.weight.shape
    torch.Size([2, 2])
    """
    modules = fsdp_modules(model)
    done: list[Any] = []
    try:
        for module in modules:
            module.unshard()  # type: ignore[operator]
            done.append(module)
        yield model
    finally:
        for module in reversed(done):
            module.reshard()  # type: ignore[operator]


def check_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Raise ``ValueError`` if ``optimizer`` holds tensors that are not ``model``'s parameters.

    The usual cause is an optimizer created before ``fully_shard(model)``, which then
    updates the old parameters while the model trains with new ones.

    >>> model = torch.nn.Linear(2, 2)
    >>> check_optimizer(model, torch.optim.SGD(model.parameters(), lr=0.1))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    mine = {id(p) for p in model.parameters()}
    stale = [
        (g, k)
        for g, group in enumerate(optimizer.param_groups)
        for k, p in enumerate(group["params"])
        if id(p) not in mine
    ]
    if stale:
        g, k = stale[0]
        hint = ""
        if fsdp_modules(model):
            hint = (
                " The model is sharded with fully_shard, which replaces every parameter: "
                "create the optimizer after fully_shard(model)."
            )
        raise ValueError(
            f"optimizer: {len(stale)} of its parameters (first: group {g}, index {k}) are "
            f"not parameters of the model.{hint}"
        )
