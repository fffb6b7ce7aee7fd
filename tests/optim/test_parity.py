"""Every alias and class against its torch.optim counterpart, driven by one registry."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import optiquant as oq
from optiquant.testing import mlp_loss, mlp_params, step_tolerance

STEPS = 10


@dataclass(frozen=True)
class Row:
    name: str
    alias: Callable[..., oq.GradientTransformation]
    cls: type[torch.optim.Optimizer]
    torch_cls: type[torch.optim.Optimizer] | None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.name}({opts})"


def lion_reference(
    params: list[torch.nn.Parameter],
    lr: float,
    betas=(0.9, 0.99),
    weight_decay=0.0,
    maximize: bool = False,
):
    """Lion written from the paper's algorithm box, as an oracle."""
    state = [torch.zeros_like(p) for p in params]

    class _Opt:
        def step(self) -> None:
            with torch.no_grad():
                for p, m in zip(params, state):
                    g = -p.grad if maximize else p.grad
                    c = betas[0] * m + (1 - betas[0]) * g
                    p.add_(torch.sign(c) + weight_decay * p, alpha=-lr)
                    m.mul_(betas[1]).add_(g, alpha=1 - betas[1])

        def zero_grad(self) -> None:
            for p in params:
                p.grad = None

    return _Opt()


REGISTRY = [
    Row("sgd", oq.sgd, oq.SGD, torch.optim.SGD, dict(lr=0.1)),
    Row("sgd", oq.sgd, oq.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    Row(
        "sgd",
        oq.sgd,
        oq.SGD,
        torch.optim.SGD,
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    ),
    Row("sgd", oq.sgd, oq.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.8, dampening=0.3)),
    Row("sgd", oq.sgd, oq.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.5, maximize=True)),
    Row("adam", oq.adam, oq.Adam, torch.optim.Adam, dict(lr=1e-2)),
    Row("adam", oq.adam, oq.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1, maximize=True)),
    Row(
        "adam",
        oq.adam,
        oq.Adam,
        torch.optim.Adam,
        dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, amsgrad=True),
    ),
    Row("adamw", oq.adamw, oq.AdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    Row(
        "adamw",
        oq.adamw,
        oq.AdamW,
        torch.optim.AdamW,
        dict(lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True),
    ),
    Row("adamax", oq.adamax, oq.Adamax, torch.optim.Adamax, dict(lr=1e-2)),
    Row(
        "adamax",
        oq.adamax,
        oq.Adamax,
        torch.optim.Adamax,
        dict(lr=1e-2, weight_decay=0.1, maximize=True),
    ),
    Row("adagrad", oq.adagrad, oq.Adagrad, torch.optim.Adagrad, dict(lr=0.1)),
    Row(
        "adagrad",
        oq.adagrad,
        oq.Adagrad,
        torch.optim.Adagrad,
        dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1, maximize=True),
    ),
    Row("radam", oq.radam, oq.RAdam, torch.optim.RAdam, dict(lr=1e-2)),
    Row("radam", oq.radam, oq.RAdam, torch.optim.RAdam, dict(lr=1e-2, weight_decay=0.1)),
    Row(
        "radam",
        oq.radam,
        oq.RAdam,
        torch.optim.RAdam,
        dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
    ),
    Row("nadam", oq.nadam, oq.NAdam, torch.optim.NAdam, dict(lr=1e-2)),
    Row(
        "nadam",
        oq.nadam,
        oq.NAdam,
        torch.optim.NAdam,
        dict(lr=1e-2, weight_decay=0.1, maximize=True),
    ),
    Row(
        "nadam",
        oq.nadam,
        oq.NAdam,
        torch.optim.NAdam,
        dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, momentum_decay=1e-2),
    ),
    Row("rmsprop", oq.rmsprop, oq.RMSProp, torch.optim.RMSprop, dict(lr=1e-2)),
    Row("rmsprop", oq.rmsprop, oq.RMSProp, torch.optim.RMSprop, dict(lr=1e-2, centered=True)),
    Row(
        "rmsprop",
        oq.rmsprop,
        oq.RMSProp,
        torch.optim.RMSprop,
        dict(lr=1e-2, momentum=0.9, maximize=True),
    ),
    Row(
        "rmsprop",
        oq.rmsprop,
        oq.RMSProp,
        torch.optim.RMSprop,
        dict(lr=1e-2, alpha=0.9, weight_decay=0.1, centered=True, momentum=0.5),
    ),
    Row("lion", oq.lion, oq.Lion, None, dict(lr=1e-3)),
    Row(
        "lion",
        oq.lion,
        oq.Lion,
        None,
        dict(lr=1e-3, betas=(0.95, 0.98), weight_decay=0.1, maximize=True),
    ),
]
IDS = [row.id for row in REGISTRY]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """torch.optim keeps scalar state (steps, NAdam's mu product) in the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def reference_trajectory(row: Row, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    params = {k: torch.nn.Parameter(v) for k, v in mlp_params(dtype=dtype).items()}
    if row.torch_cls is None:
        opt: Any = lion_reference(list(params.values()), **row.kwargs)
    else:
        opt = row.torch_cls(list(params.values()), foreach=False, **row.kwargs)
    with default_dtype(dtype):
        for step in range(STEPS):
            opt.zero_grad()
            mlp_loss(params, step).backward()
            opt.step()
    return {k: v.detach() for k, v in params.items()}


def functional_trajectory(
    row: Row,
    dtype: torch.dtype,
    *,
    foreach: bool | None,
    inplace: bool = True,
    one_call: bool = False,
):
    params = mlp_params(dtype=dtype)
    tx = row.alias(**row.kwargs, foreach=foreach)
    state = tx.init(params)
    for step in range(STEPS):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        grads = dict(
            zip(leaves, torch.autograd.grad(mlp_loss(leaves, step), list(leaves.values())))
        )
        if one_call:
            params, state = oq.update_and_apply(tx, grads, state, params, inplace=inplace)
        else:
            updates, state = tx.update(grads, state, params, inplace=inplace)
            params = oq.apply_updates(params, updates, inplace=inplace)
        if not inplace:
            params = {k: v.detach() for k, v in params.items()}
            state = _detach(state)
    return params


def _detach(tree: Any) -> Any:
    import optree

    return optree.tree_map(
        lambda t: t.detach() if isinstance(t, torch.Tensor) else t, tree, none_is_leaf=True
    )


def class_trajectory(row: Row, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    params = {k: torch.nn.Parameter(v) for k, v in mlp_params(dtype=dtype).items()}
    opt = row.cls(list(params.values()), **row.kwargs)
    for step in range(STEPS):
        opt.zero_grad()
        mlp_loss(params, step).backward()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


def _tolerance(row: Row, dtype: torch.dtype) -> tuple[float, float]:
    if dtype == torch.float64:
        return 1e-10, 1e-12
    lr = row.kwargs.get("lr", 1e-3)
    return 1e-5, step_tolerance(dtype, STEPS, scale=max(lr, 1e-2) * 10)


def _compare(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], row: Row, dtype: torch.dtype
):
    rtol, atol = _tolerance(row, dtype)
    start = mlp_params(dtype=dtype)
    moved = max(float((expected[k] - start[k]).abs().max()) for k in start)
    assert moved > 0, "the reference did not move; the comparison would be vacuous"
    for key in expected:
        torch.testing.assert_close(
            actual[key], expected[key], rtol=rtol, atol=atol, msg=lambda m, key=key: f"{key}: {m}"
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("row", REGISTRY, ids=IDS)
def test_functional_matches_torch(row: Row, dtype: torch.dtype) -> None:
    _compare(
        functional_trajectory(row, dtype, foreach=None),
        reference_trajectory(row, dtype),
        row,
        dtype,
    )


@pytest.mark.parametrize("row", REGISTRY, ids=IDS)
def test_class_matches_torch(row: Row) -> None:
    dtype = torch.float64
    _compare(class_trajectory(row, dtype), reference_trajectory(row, dtype), row, dtype)


@pytest.mark.parametrize("row", REGISTRY, ids=IDS)
def test_foreach_path_matches_reference_path(row: Row) -> None:
    dtype = torch.float64
    reference = functional_trajectory(row, dtype, foreach=False)
    fast = functional_trajectory(row, dtype, foreach=True)
    _compare(fast, reference, row, dtype)


@pytest.mark.parametrize("row", REGISTRY, ids=IDS)
def test_differentiable_path_matches_inplace_path(row: Row) -> None:
    dtype = torch.float64
    _compare(
        functional_trajectory(row, dtype, foreach=None, inplace=False),
        functional_trajectory(row, dtype, foreach=None),
        row,
        dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("row", REGISTRY, ids=IDS)
def test_update_and_apply_matches_torch(row: Row, dtype: torch.dtype) -> None:
    _compare(
        functional_trajectory(row, dtype, foreach=None, one_call=True),
        reference_trajectory(row, dtype),
        row,
        dtype,
    )


@pytest.mark.parametrize("make", [oq.adam, oq.adamw, oq.sgd, oq.adagrad], ids=lambda f: f.__name__)
def test_update_and_apply_takes_the_fused_step(make: Callable[..., Any]) -> None:
    """On CPU tensors with plain-number hyperparameters no separate update is computed."""
    params = mlp_params()
    tx = make(lr=0.01)

    def no_update(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the two-pass path ran")

    fused_only = tx._replace(update=no_update)
    state = tx.init(params)
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    before = {k: v.clone() for k, v in params.items()}
    params, state = oq.update_and_apply(fused_only, grads, state, params)
    assert all(not torch.equal(params[k], before[k]) for k in params)
