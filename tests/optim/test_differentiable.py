"""Differentiable mode: meta-gradients through unrolled updates match finite differences."""

from __future__ import annotations

import pytest
import torch

import optiquant as oq
from optiquant.testing import mlp_loss, mlp_params


def unrolled_loss(
    lr: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, steps: int = 5, **kw
) -> torch.Tensor:
    params = {k: v.requires_grad_(True) for k, v in mlp_params(seed=3).items()}
    tx = oq.adam(lr=lr, betas=(b1, b2), **kw)
    state = tx.init(params)
    for step in range(steps):
        names = list(params)
        grads = torch.autograd.grad(
            mlp_loss(params, step), [params[k] for k in names], create_graph=True
        )
        updates, state = tx.update(dict(zip(names, grads)), state, params, inplace=False)
        params = oq.apply_updates(params, updates, inplace=False)
    return mlp_loss(params, 99)


def central_difference(fn, values: list[torch.Tensor], index: int, h: float = 1e-6) -> float:
    up = [v.clone() for v in values]
    down = [v.clone() for v in values]
    up[index] += h
    down[index] -= h
    return float((fn(*up) - fn(*down)).detach() / (2 * h))


@pytest.mark.parametrize("foreach", [False, True])
def test_meta_gradient_of_adam_matches_finite_differences(foreach: bool) -> None:
    values = [
        torch.tensor(0.05, dtype=torch.float64),
        torch.tensor(0.8, dtype=torch.float64),
        torch.tensor(0.95, dtype=torch.float64),
    ]
    leaves = [v.clone().requires_grad_(True) for v in values]
    grads = torch.autograd.grad(unrolled_loss(*leaves, foreach=foreach), leaves)
    for i, g in enumerate(grads):
        fd = central_difference(lambda *a: unrolled_loss(*a, foreach=foreach), values, i)
        assert abs(float(g) - fd) <= 1e-6 * max(abs(fd), 1e-3), (i, float(g), fd)


def test_meta_gradient_stays_finite_with_exactly_zero_gradients() -> None:
    """A parameter that never receives gradient (dead unit) must not poison the meta-gradient."""
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    dead = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    params = {"w": w, "dead": dead}
    tx = oq.adam(lr=lr)
    state = tx.init(params)

    def loss_of(p):
        return ((p["w"] - 3.0) ** 2).sum() + 0.0 * p["dead"].sum()

    for _ in range(5):
        g = torch.autograd.grad(loss_of(params), [params["w"], params["dead"]], create_graph=True)
        updates, state = tx.update({"w": g[0], "dead": g[1]}, state, params, inplace=False)
        params = oq.apply_updates(params, updates, inplace=False)
    meta = torch.autograd.grad(loss_of(params), lr)[0].detach()
    assert torch.isfinite(meta)

    def plain(lr_value: float) -> float:
        p = torch.tensor([1.0, 2.0], dtype=torch.float64)
        m = torch.zeros(2, dtype=torch.float64)
        v = torch.zeros(2, dtype=torch.float64)
        for t in range(1, 6):
            g = 2 * (p - 3.0)
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            p = p - lr_value * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        return float(((p - 3.0) ** 2).sum())

    fd = (plain(0.1 + 1e-6) - plain(0.1 - 1e-6)) / 2e-6
    assert abs(float(meta) - fd) <= 1e-6 * abs(fd)


def test_inplace_false_mutates_nothing() -> None:
    params = mlp_params()
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    before_p = {k: v.clone() for k, v in params.items()}
    before_g = {k: v.clone() for k, v in grads.items()}
    for tx in [
        oq.adam(1e-2, weight_decay=0.1),
        oq.sgd(0.1, momentum=0.9),
        oq.rmsprop(centered=True, momentum=0.5),
        oq.adamax(),
        oq.radam(),
        oq.nadam(),
        oq.lion(),
        oq.adagrad(),
        oq.adamw(),
    ]:
        state = tx.init(params)
        import optree

        state_before = optree.tree_map(lambda t: t.clone(), state)
        tx.update(grads, state, params, inplace=False)
        for k in params:
            assert torch.equal(params[k], before_p[k]) and torch.equal(grads[k], before_g[k])
        for a, b in zip(optree.tree_leaves(state), optree.tree_leaves(state_before)):
            assert torch.equal(a, b)


def test_func_optimizer_unrolls_differentiably() -> None:
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    w0 = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    opt = oq.FuncOptimizer(oq.sgd(lr=lr))
    w = w0
    for _ in range(3):
        w = opt.step((w**2).sum(), w)
    # w3 = w0 (1 - 2 lr)^3  ->  d(w3^2)/dlr = 2 w3 * w0 * 3 (1 - 2lr)^2 * (-2)
    grad = torch.autograd.grad((w**2).sum(), lr)[0].detach()
    expected = 2 * (2.0 * 0.8**3) * 2.0 * 3 * 0.8**2 * (-2)
    assert abs(float(grad) - expected) < 1e-12


def test_fast_differentiable_adam_node_matches_finite_differences() -> None:
    """Plain-number betas take the one-node path; its hand-written backward must be exact."""
    base = {k: v.clone().requires_grad_(True) for k, v in mlp_params(seed=5).items()}

    def run(lr: torch.Tensor | float, w0_shift: torch.Tensor) -> torch.Tensor:
        params = dict(base)
        params["w0"] = params["w0"] + w0_shift
        tx = oq.adam(lr=lr, betas=(0.8, 0.95), eps=1e-6, eps_root=1e-9)
        state = tx.init(params)
        for step in range(5):
            names = list(params)
            grads = torch.autograd.grad(
                mlp_loss(params, step), [params[k] for k in names], create_graph=True
            )
            updates, state = tx.update(dict(zip(names, grads)), state, params, inplace=False)
            params = oq.apply_updates(params, updates, inplace=False)
        return mlp_loss(params, 99)

    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    shift = torch.zeros_like(base["w0"], requires_grad=True)
    g_lr, g_shift = torch.autograd.grad(run(lr, shift), [lr, shift])
    h = 1e-6
    zero = torch.zeros_like(base["w0"])
    fd_lr = float(
        (
            run(torch.tensor(0.05 + h, dtype=torch.float64), zero)
            - run(torch.tensor(0.05 - h, dtype=torch.float64), zero)
        ).detach()
    ) / (2 * h)
    assert abs(float(g_lr) - fd_lr) <= 1e-6 * abs(fd_lr)
    # A plain-number lr folds the step size into the same node: check that path too.
    (g_shift_plain,) = torch.autograd.grad(run(0.05, shift), [shift])  # type: ignore[arg-type]
    torch.testing.assert_close(g_shift_plain, g_shift, rtol=1e-10, atol=1e-14)
    for index in [(0, 0), (3, 2), (7, 5)]:
        e = torch.zeros_like(zero)
        e[index] = h
        lr0 = torch.tensor(0.05, dtype=torch.float64)
        fd = float((run(lr0, e) - run(lr0, -e)).detach()) / (2 * h)
        assert abs(float(g_shift[index]) - fd) <= 1e-6 * max(abs(fd), 1e-4), index


@pytest.mark.parametrize("eps", [1e-7, 1e-300])  # 1e-300: the root is clamped in a copy
@pytest.mark.parametrize("n_tensors", [3, 12])  # both storage modes of the one-node backward
def test_one_node_adam_backward_matches_elementwise_path(n_tensors: int, eps: float) -> None:
    """The hand-written backward equals autograd through the elementwise ops (float64)."""
    gen = torch.Generator().manual_seed(n_tensors)
    base = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(n_tensors)]
    data = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(n_tensors)]

    def meta_grads(foreach: bool | None) -> list[torch.Tensor]:
        start = [p.clone().requires_grad_(True) for p in base]
        params = list(start)
        tx = oq.adam(lr=0.03, betas=(0.8, 0.95), eps=eps, foreach=foreach)
        state = tx.init(params)
        for _ in range(5):
            # tensor 0 never gets a gradient other than exact zeros (a dead unit)
            grads = [torch.zeros_like(params[0])] + [
                torch.tanh(p * d) for p, d in zip(params[1:], data[1:])
            ]
            updates, state = tx.update(grads, state, params, inplace=False)
            params = oq.apply_updates(params, updates, inplace=False)
        loss = sum(((p - d) ** 2).sum() for p, d in zip(params, data))
        out = torch.autograd.grad(loss, start)
        assert all(torch.isfinite(g).all() for g in out)
        return list(out)

    for fast, reference in zip(meta_grads(None), meta_grads(False)):
        torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-13)
