"""Tiny models, data and the registry of class optimizers shared by the 2-process tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import optiquant as oq
from optiquant.distributed import DistributedKron, gathered
from optiquant.psgd import Kron, kron

STEPS = 5
KRON_OPTIONS: dict[str, Any] = dict(preconditioner_update_probability=1.0, weight_decay=0.01)


def mlp(dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """A 6-8-5 tanh MLP with fixed initial weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5)).to(dtype)


def batch(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch (8 samples); rank r of 2 trains on rows 4r..4r+3."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randn(8, 5, generator=gen, dtype=torch.float64).to(dtype)
    return x, y


def local_batch(rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's equal share of :func:`batch`."""
    x, y = batch()
    return x.chunk(world_size)[rank], y.chunk(world_size)[rank]


def train(model: nn.Module, opt: Any, x: torch.Tensor, y: torch.Tensor, steps: int = STEPS) -> None:
    """``steps`` steps of mean squared error on ``(x, y)``."""
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def shard(model: nn.Sequential) -> nn.Sequential:
    """FSDP2: each Linear, then the root."""
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def kron_class() -> type[Kron]:
    """PSGD's Kron class, marked as needing whole tensors if it is not already."""
    if getattr(Kron, "whole_tensors", False):
        return Kron

    class WholeKron(Kron):
        whole_tensors = True

    return WholeKron


#: Every class optimizer, with options that exercise momentum, decay and amsgrad.
OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "SGD": lambda p: oq.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
    "Adam": lambda p: oq.Adam(p, lr=0.01, amsgrad=True),
    "AdamW": lambda p: oq.AdamW(p, lr=0.01),
    "Adamax": lambda p: oq.Adamax(p, lr=0.01),
    "RAdam": lambda p: oq.RAdam(p, lr=0.01),
    "NAdam": lambda p: oq.NAdam(p, lr=0.01),
    "Adagrad": lambda p: oq.Adagrad(p, lr=0.05),
    "RMSProp": lambda p: oq.RMSProp(p, lr=0.01, momentum=0.5, centered=True),
    "Lion": lambda p: oq.Lion(p, lr=0.01),
    "Optimizer(clip_grad_norm, sgd)": lambda p: oq.Optimizer(
        p, oq.chain(oq.clip_grad_norm(0.1), oq.sgd(0.1))
    ),
    "psgd.Kron": lambda p: kron_class()(p, lr=0.05, **KRON_OPTIONS),
    "Optimizer(gathered(kron))": lambda p: oq.Optimizer(
        p, gathered(kron(learning_rate=0.05, **KRON_OPTIONS))
    ),
    "DistributedKron": lambda p: DistributedKron(p, lr=0.05, **KRON_OPTIONS),
}
