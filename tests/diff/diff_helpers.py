"""Shared pieces for the differentiable-optimization tests: small float64 problems and
central finite differences."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

F64 = torch.float64


def mlp(sizes: list[int], activation: type[nn.Module] = nn.Tanh, seed: int = 0) -> nn.Sequential:
    """A float64 MLP with a fixed initialisation."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(fan_in, fan_out).to(F64)
        with torch.no_grad():
            linear.weight.copy_(
                torch.randn(fan_out, fan_in, generator=gen, dtype=F64) / fan_in**0.5
            )
            linear.bias.copy_(0.1 * torch.randn(fan_out, generator=gen, dtype=F64))
        layers.append(linear)
        if index < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def flat_params(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def load_flat(module: nn.Module, vector: torch.Tensor) -> None:
    start = 0
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(vector[start : start + p.numel()].reshape(p.shape))
            start += p.numel()


def central_differences(
    fn: Callable[[torch.Tensor], float], x: torch.Tensor, h: float = 1e-6
) -> torch.Tensor:
    """The gradient of ``fn`` at ``x`` by central differences, entry by entry."""
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        step = torch.zeros_like(x)
        step.view(-1)[i] = h
        grad.view(-1)[i] = (fn(x + step) - fn(x - step)) / (2 * h)
    return grad


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))
