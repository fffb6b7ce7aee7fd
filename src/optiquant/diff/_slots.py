"""Where a module keeps its tensors: ``(owner, key)`` slots addressed by dotted names.

``kind`` picks the store: ``'params'`` (``_parameters``), ``'buffers'`` (``_buffers``) or
``'meta'`` (the meta-parameters of a :class:`~optiquant.diff.nn.MetaGradientModule`).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

Slot = tuple[nn.Module, str]
_STORES = {"params": "_parameters", "buffers": "_buffers", "meta": "_meta_parameters"}


def check_module(target: object, name: str = "module") -> nn.Module:
    """Return ``target``; raise ``TypeError`` unless it is an ``nn.Module``."""
    if not isinstance(target, nn.Module):
        raise TypeError(f"{name}: expected a torch.nn.Module, got {type(target).__name__}")
    return target


def _store(owner: nn.Module, kind: str) -> dict[str, torch.Tensor | None]:
    return cast("dict[str, torch.Tensor | None]", owner.__dict__.get(_STORES[kind], {}))


def named_slots(module: nn.Module, kind: str) -> dict[str, Slot]:
    """Dotted name -> slot for every non-``None`` tensor of ``kind`` in ``module``.

    A submodule reachable by several paths is listed once; a tensor shared by two
    different submodules (tied weights) has one slot in each.
    """
    out: dict[str, Slot] = {}
    for prefix, owner in module.named_modules():
        for key, value in _store(owner, kind).items():
            if value is not None:
                out[f"{prefix}.{key}" if prefix else key] = (owner, key)
    return out


def read(slot: Slot, kind: str) -> torch.Tensor:
    """The tensor currently held by ``slot``."""
    owner, key = slot
    return cast(torch.Tensor, _store(owner, kind)[key])


def write(slot: Slot, kind: str, value: torch.Tensor) -> None:
    """Put ``value`` in ``slot`` (any tensor, not only ``nn.Parameter``)."""
    owner, key = slot
    _store(owner, kind)[key] = value


def unique_parameters(module: nn.Module) -> list[tuple[torch.Tensor, list[Slot]]]:
    """Each distinct parameter tensor of ``module`` with all the slots that hold it."""
    by_id: dict[int, tuple[torch.Tensor, list[Slot]]] = {}
    for slot in named_slots(module, "params").values():
        tensor = read(slot, "params")
        entry = by_id.setdefault(id(tensor), (tensor, []))
        entry[1].append(slot)
    return list(by_id.values())
