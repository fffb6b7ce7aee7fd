"""Meta-optimizers: meta-gradients through unrolled inner loops against central finite
differences in float64, and the module rewiring they rely on.

Tolerance: central differences with h = 1e-6 in float64 have truncation error ~h^2 |f'''|
and rounding error ~1e-16 |f| / h ~ 1e-10 (relative), so an exact meta-gradient agrees to
well under the 1e-6 relative error asserted here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from diff_helpers import F64, central_differences, flat_params, load_flat, mlp, relative_error
from torch import nn

import optiquant.diff as diff
from optiquant.optim.alias import sgd

SIZES = [2, 6, 1]
STEPS = 5


def _data(seed: int = 1) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 2, generator=gen, dtype=F64) * 2 - 1
    xq = torch.rand(16, 2, generator=gen, dtype=F64) * 2 - 1
    return x, torch.sin(3 * x[:, :1]), xq, torch.sin(3 * xq[:, :1])


def _unrolled(
    make_opt: Callable[[nn.Module], diff.MetaOptimizer],
    net: nn.Module,
    data: tuple[torch.Tensor, ...],
) -> torch.Tensor:
    x, y, xq, yq = data
    opt = make_opt(net)
    for _ in range(STEPS):
        opt.step(((net(x) - y) ** 2).mean())
    return ((net(xq) - yq) ** 2).mean()


def _check_against_finite_differences(
    make_opt: Callable[[nn.Module], diff.MetaOptimizer],
    make_net: Callable[[], nn.Module],
    data: tuple[torch.Tensor, ...],
) -> torch.Tensor:
    net = make_net()
    theta = list(net.parameters())
    loss = _unrolled(make_opt, net, data)
    meta_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, theta)])

    def value(vector: torch.Tensor) -> float:
        fresh = make_net()
        load_flat(fresh, vector)
        return float(_unrolled(make_opt, fresh, data).detach())

    fd = central_differences(value, torch.cat([t.detach().reshape(-1) for t in theta]))
    assert torch.isfinite(meta_grad).all()
    assert relative_error(meta_grad, fd) < 1e-6
    return meta_grad


OPTIMIZERS = {
    "sgd": lambda net: diff.MetaSGD(net, lr=0.3),
    "sgd-momentum-nesterov": lambda net: diff.MetaSGD(net, lr=0.1, momentum=0.9, nesterov=True),
    "sgd-weight-decay": lambda net: diff.MetaSGD(net, lr=0.1, momentum=0.5, weight_decay=0.1),
    "adam": lambda net: diff.MetaAdam(net, lr=0.05),
    "adam-eps-root": lambda net: diff.MetaAdam(net, lr=0.05, eps_root=1e-8, weight_decay=0.01),
    "adamw": lambda net: diff.MetaAdamW(net, lr=0.05, weight_decay=0.1),
    "rmsprop-centered": lambda net: diff.MetaRMSProp(net, lr=0.01, centered=True, momentum=0.5),
    "adagrad": lambda net: diff.MetaAdagrad(net, lr=0.1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_meta_gradient_matches_finite_differences(name: str) -> None:
    _check_against_finite_differences(OPTIMIZERS[name], lambda: mlp(SIZES), _data())


def _dead_relu_net() -> nn.Sequential:
    net = mlp(SIZES, nn.ReLU, seed=3)
    with torch.no_grad():
        net[0].bias[:3] = -10.0  # |w x| < 3 on [-1, 1]^2: these units never activate
    return net


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_meta_gradient_with_exactly_zero_inner_gradients(name: str) -> None:
    data = _data()
    net = _dead_relu_net()
    loss = ((net(data[0]) - data[1]) ** 2).mean()
    grads = torch.autograd.grad(loss, list(net.parameters()))
    assert (grads[0][:3] == 0).all() and (grads[1][:3] == 0).all() and (grads[2][:, :3] == 0).all()
    meta_grad = _check_against_finite_differences(OPTIMIZERS[name], _dead_relu_net, data)
    # The dead units' incoming weights do not influence the outer loss at all.
    assert (meta_grad[:6] == 0).all()


def test_zero_gradients_make_a_plain_sqrt_adam_nan() -> None:
    """The dead-unit case really reaches sqrt'(0): a textbook Adam written with torch.sqrt
    gives NaN meta-gradients on it, MetaAdam does not (checked above)."""
    x, y, xq, yq = _data()
    net = _dead_relu_net()
    theta = list(net.parameters())
    params = theta
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in range(1, STEPS + 1):
        out = torch.func.functional_call(
            net, dict(zip([n for n, _ in net.named_parameters()], params)), (x,)
        )
        grads = torch.autograd.grad(((out - y) ** 2).mean(), params, create_graph=True)
        m = [0.9 * a + 0.1 * g for a, g in zip(m, grads)]
        v = [0.999 * b + 0.001 * g * g for b, g in zip(v, grads)]
        params = [
            p - 0.05 * (a / (1 - 0.9**t)) / (torch.sqrt(b / (1 - 0.999**t)) + 1e-8)
            for p, a, b in zip(params, m, v)
        ]
    out = torch.func.functional_call(
        net, dict(zip([n for n, _ in net.named_parameters()], params)), (xq,)
    )
    naive = torch.autograd.grad(((out - yq) ** 2).mean(), theta)
    assert any(torch.isnan(g).any() for g in naive)


def test_learning_rate_meta_gradient_matches_finite_differences() -> None:
    data = _data()
    x, y, xq, yq = data

    def outer(lr: torch.Tensor) -> torch.Tensor:
        net = mlp(SIZES)
        opt = diff.MetaSGD(net, lr=lr, momentum=0.5)
        for _ in range(STEPS):
            opt.step(((net(x) - y) ** 2).mean())
        return ((net(xq) - yq) ** 2).mean()

    lr = torch.tensor(0.2, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(outer(lr), lr)
    fd = central_differences(lambda v: float(outer(v.reshape(())).detach()), lr.detach().reshape(1))
    assert relative_error(grad.reshape(1), fd) < 1e-6


def test_maml_over_tasks_accumulates_the_sum_of_meta_gradients() -> None:
    tasks = [_data(seed) for seed in (1, 2)]

    def maml(net: nn.Module, backward: bool) -> float:
        opt = diff.MetaAdam(net, lr=0.05)
        net_state = diff.extract_state_dict(net)
        opt_state = diff.extract_state_dict(opt)
        total = 0.0
        for x, y, xq, yq in tasks:
            for _ in range(STEPS):
                opt.step(((net(x) - y) ** 2).mean())
            loss = ((net(xq) - yq) ** 2).mean()
            if backward:
                loss.backward()
            total += float(loss.detach())
            diff.recover_state_dict(net, net_state)
            diff.recover_state_dict(opt, opt_state)
        return total

    net = mlp(SIZES)
    maml(net, backward=True)
    meta_grad = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    assert all(p.is_leaf for p in net.parameters())  # recovered

    def value(vector: torch.Tensor) -> float:
        fresh = mlp(SIZES)
        load_flat(fresh, vector)
        return maml(fresh, backward=False)

    fd = central_differences(value, flat_params(mlp(SIZES)))
    assert relative_error(meta_grad, fd) < 1e-6


def test_step_rewires_the_module() -> None:
    net = mlp(SIZES)
    before = [p.detach().clone() for p in net.parameters()]
    originals = list(net.parameters())
    opt = diff.MetaSGD(net, lr=0.1)
    x, y, _, _ = _data()
    loss = ((net(x) - y) ** 2).mean()
    grads = torch.autograd.grad(loss, originals, retain_graph=True)
    opt.step(loss)
    for p, p0, g, orig in zip(net.parameters(), before, grads, originals):
        assert not p.is_leaf and p.requires_grad
        torch.testing.assert_close(p.detach(), p0 - 0.1 * g, rtol=0, atol=1e-15)
        torch.testing.assert_close(orig.detach(), p0, rtol=0, atol=0)  # leaves untouched
    assert not isinstance(net[0].weight, nn.Parameter)


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3, bias=False).to(F64)
        self.b = nn.Linear(3, 3, bias=False).to(F64)
        self.b.weight = self.a.weight
        self.frozen = nn.Parameter(torch.ones(3, dtype=F64), requires_grad=False)
        self.unused = nn.Parameter(torch.ones(2, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x))) * self.frozen


def test_tied_frozen_and_unused_parameters() -> None:
    torch.manual_seed(0)
    net = _Tied()
    x = torch.randn(4, 3, dtype=F64)
    w0 = net.a.weight
    loss = net(x).pow(2).sum()
    (g,) = torch.autograd.grad(loss, [w0], retain_graph=True)  # both uses summed
    opt = diff.MetaSGD(net, lr=0.1)
    opt.step(loss)
    assert net.a.weight is net.b.weight  # still tied
    torch.testing.assert_close(net.a.weight.detach(), w0.detach() - 0.1 * g, rtol=0, atol=1e-15)
    assert net.frozen.is_leaf and net.unused.is_leaf  # not updated
    assert len(opt.state_dict()) == 1


def test_state_dict_round_trip_and_mismatch() -> None:
    net = mlp(SIZES)
    opt = diff.MetaAdam(net, lr=0.1)
    x, y, _, _ = _data()
    saved = diff.extract_state_dict(opt, by="deepcopy")
    opt.step(((net(x) - y) ** 2).mean())
    after_one = opt.state_dict()
    opt.load_state_dict(saved)
    assert opt.state_dict() is not after_one
    for a, b in zip(
        torch.utils._pytree.tree_leaves(opt.state_dict()), torch.utils._pytree.tree_leaves(saved)
    ):
        assert a is b
    other = diff.MetaSGD(mlp([2, 3, 1]), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="structure"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="tuple of 1"):
        opt.load_state_dict(())


def test_add_param_group_updates_both_modules() -> None:
    a, b = mlp(SIZES, seed=0), mlp(SIZES, seed=1)
    opt = diff.MetaOptimizer(a, sgd(lr=0.1))
    opt.add_param_group(b)
    x, y, _, _ = _data()
    opt.step(((a(x) + b(x) - y) ** 2).mean())
    assert not a[0].weight.is_leaf and not b[0].weight.is_leaf
    assert len(opt.state_dict()) == 2
    with pytest.raises(ValueError, match="already handled"):
        opt.add_param_group(a)


def test_bad_input() -> None:
    net = mlp(SIZES)
    with pytest.raises(TypeError, match=r"module: expected a torch\.nn\.Module"):
        diff.MetaSGD(list(net.parameters()), lr=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="transformation: expected a GradientTransformation"):
        diff.MetaOptimizer(net, "adam")  # type: ignore[arg-type]
    opt = diff.MetaSGD(net, lr=0.1)
    x, y, _, _ = _data()
    with pytest.raises(ValueError, match="scalar"):
        opt.step((net(x) - y) ** 2)
    with pytest.raises(ValueError, match="does not require grad"):
        opt.step(torch.tensor(1.0))
    with pytest.raises(TypeError, match="loss: expected a tensor"):
        opt.step(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):
        diff.MetaAdam(net, lr=-1.0)
