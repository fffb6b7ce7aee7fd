"""Helpers for tests: reference problems, tree comparison and dtype-aware tolerances."""

from __future__ import annotations

import itertools
from typing import Any

import torch

from optiquant.tree import tree_leaves

__all__ = ["assert_trees_close", "mlp_loss", "mlp_params", "step_tolerance"]


def mlp_params(
    seed: int = 0, dtype: torch.dtype = torch.float64, sizes: tuple[int, ...] = (6, 8, 3)
) -> dict[str, torch.Tensor]:
    """Parameters of a small tanh MLP, drawn from a fixed seed.

    >>> sorted(mlp_params().keys())
    ['b0', 'b1', 'w0', 'w1']
    """
    gen = torch.Generator().manual_seed(seed)
    params = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        params[f"w{i}"] = (
            torch.randn(fan_out, fan_in, generator=gen, dtype=torch.float64) / fan_in**0.5
        ).to(dtype)
        params[f"b{i}"] = (0.1 * torch.randn(fan_out, generator=gen, dtype=torch.float64)).to(dtype)
    return params


def mlp_loss(params: dict[str, Any], step: int, batch: int = 16) -> torch.Tensor:
    """A deterministic regression loss of the MLP on a batch that depends on ``step``.

    >>> float(mlp_loss(mlp_params(), step=0)) > 0
    True
    """
    w0 = params["w0"]
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(batch, w0.shape[1], generator=gen, dtype=torch.float64).to(w0.dtype)
    n_layers = len([k for k in params if k.startswith("w")])
    h = x
    for i in range(n_layers):
        h = h @ params[f"w{i}"].T + params[f"b{i}"]
        if i < n_layers - 1:
            h = torch.tanh(h)
    target = torch.sin(x[:, : h.shape[1]] * 2.0)
    return ((h - target) ** 2).mean()


def step_tolerance(dtype: torch.dtype, steps: int, scale: float = 1.0) -> float:
    """An absolute tolerance for ``steps`` optimizer steps of size ``scale`` in ``dtype``.

    Rounding errors of each step are a few ulps of the update and add up linearly.

    >>> step_tolerance(torch.float64, 10) < 1e-12
    True
    """
    return 64 * steps * torch.finfo(dtype).eps * scale


def assert_trees_close(actual: Any, expected: Any, *, rtol: float, atol: float) -> None:
    """Assert two trees of tensors are leafwise close, with a message naming the leaf.

    >>> import torch
    >>> assert_trees_close({"a": torch.ones(1)}, {"a": torch.ones(1)}, rtol=0, atol=0)
    """
    a_leaves, e_leaves = tree_leaves(actual), tree_leaves(expected)
    assert len(a_leaves) == len(e_leaves), f"{len(a_leaves)} leaves vs {len(e_leaves)}"
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
        if a is None or e is None:
            assert a is None and e is None, f"leaf {i}: {a!r} vs {e!r}"
            continue
        try:
            torch.testing.assert_close(a, e, rtol=rtol, atol=atol)
        except AssertionError as error:
            raise AssertionError(f"leaf {i}: {error}") from None
