"""Module front-ends: ImplicitMetaGradientModule (iMAML-style proximal regression, against the
closed form), MetaGradientModule registration, reparametrize."""

from __future__ import annotations

import pytest
import torch
from diff_helpers import F64
from torch import nn

import optiquant.diff as diff

N, D = 30, 4


def _data() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen, dtype=F64)
    y = x @ torch.randn(D, 1, generator=gen, dtype=F64) + 0.1 * torch.randn(
        N, 1, generator=gen, dtype=F64
    )
    xq = torch.randn(N, D, generator=gen, dtype=F64)
    return x, y, xq, xq @ torch.ones(D, 1, dtype=F64)


class _Proximal(diff.ImplicitMetaGradientModule, linear_solve=diff.solve_cg(rtol=1e-13)):
    """min_w mean((x w - y)^2) / 2 + lam / 2 ||w - w_meta||^2, solved exactly."""

    def __init__(self, meta_net: nn.Linear, lam: torch.Tensor) -> None:
        super().__init__()
        self.meta_net = meta_net  # a constructor argument: a meta-module
        self.lam = lam  # a plain tensor requiring grad: a meta-parameter
        self.net = nn.Linear(D, 1, bias=False).to(F64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fit = 0.5 * ((self.net(x) - y) ** 2).mean()
        prox = 0.5 * self.lam * ((self.net.weight - self.meta_net.weight) ** 2).sum()
        return fit + prox

    def solve(self, x: torch.Tensor, y: torch.Tensor) -> _Proximal:
        hessian = x.T @ x / N + self.lam * torch.eye(D, dtype=F64)
        rhs = x.T @ y / N + self.lam * self.meta_net.weight.T
        with torch.no_grad():
            self.net.weight.copy_(torch.linalg.solve(hessian, rhs).T)
        return self


class _ProximalWithOptimality(_Proximal):
    def optimality(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor]:
        residual = self.net(x) - y
        grad = residual.T @ x / N + self.lam * (self.net.weight - self.meta_net.weight)
        return (grad,)

    def solve(self, x: torch.Tensor, y: torch.Tensor) -> _ProximalWithOptimality:
        super().solve(x, y)
        return self


def _closed_form(
    meta_w: torch.Tensor, lam: torch.Tensor, data: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """d outer / d (w_meta, lam) with w* = H^-1 (X^T y / n + lam w_meta)."""
    x, y, xq, yq = data
    hessian = x.T @ x / N + lam * torch.eye(D, dtype=F64)
    w = torch.linalg.solve(hessian, x.T @ y / N + lam * meta_w.T)
    outer_grad = xq.T @ (xq @ w - yq) / N
    u = torch.linalg.solve(hessian, outer_grad)
    return (lam * u).T, (u * (meta_w.T - w)).sum()


@pytest.mark.parametrize("cls", [_Proximal, _ProximalWithOptimality])
def test_implicit_module_matches_closed_form(cls: type[_Proximal]) -> None:
    data = _data()
    x, y, xq, yq = data
    meta_net = nn.Linear(D, 1, bias=False).to(F64)
    lam = torch.tensor(0.5, dtype=F64, requires_grad=True)
    inner = cls(meta_net, lam)
    assert [n for n, _ in inner.named_parameters()] == ["net.weight"]
    assert [n for n, _ in inner.named_meta_parameters()] == ["lam", "meta_net.weight"]
    for _ in range(2):  # solving again starts from leaves
        assert inner.solve(x, y) is inner
    assert not inner.net.weight.is_leaf
    outer = 0.5 * ((inner(xq) - yq) ** 2).mean()
    g_meta, g_lam = torch.autograd.grad(outer, (meta_net.weight, lam))
    e_meta, e_lam = _closed_form(meta_net.weight.detach(), lam.detach(), data)
    torch.testing.assert_close(g_meta, e_meta, rtol=1e-8, atol=0)
    torch.testing.assert_close(g_lam, e_lam, rtol=1e-8, atol=0)


class _IterativeSolve(_Proximal):
    def solve(self, x: torch.Tensor, y: torch.Tensor) -> _IterativeSolve:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.5)
        for _ in range(300):
            optimizer.zero_grad()
            self.objective(x, y).backward()
            optimizer.step()
        return self


def test_user_optimizer_in_solve_does_not_touch_meta_gradients() -> None:
    data = _data()
    x, y, xq, yq = data
    meta_net = nn.Linear(D, 1, bias=False).to(F64)
    lam = torch.tensor(0.5, dtype=F64, requires_grad=True)
    inner = _IterativeSolve(meta_net, lam).solve(x, y)
    assert meta_net.weight.grad is None and lam.grad is None  # solve saw detached meta-params
    outer = 0.5 * ((inner(xq) - yq) ** 2).mean()
    outer.backward()
    e_meta, e_lam = _closed_form(meta_net.weight.detach(), lam.detach(), data)
    # 300 gradient steps converge to ~1e-12 here; the hypergradient inherits that accuracy.
    torch.testing.assert_close(meta_net.weight.grad, e_meta, rtol=1e-6, atol=0)
    torch.testing.assert_close(lam.grad, e_lam, rtol=1e-6, atol=0)


def test_implicit_module_errors() -> None:
    with pytest.raises(TypeError, match="optimality\\(\\) or objective\\(\\)"):

        class NoCondition(diff.ImplicitMetaGradientModule):
            def solve(self) -> None:
                return None

    class WrongOptimality(_Proximal):
        def optimality(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return (self.net.weight, self.net.weight)

        def solve(self, x: torch.Tensor, y: torch.Tensor) -> WrongOptimality:
            return self

    data = _data()
    lam = torch.tensor(0.5, dtype=F64, requires_grad=True)
    inner = WrongOptimality(nn.Linear(D, 1, bias=False).to(F64), lam).solve(data[0], data[1])
    with pytest.raises(ValueError, match="one tensor per parameter"):
        inner(data[0]).sum().backward()

    class NotScalar(diff.ImplicitMetaGradientModule):
        def __init__(self, lam: torch.Tensor) -> None:
            super().__init__()
            self.lam = lam
            self.w = nn.Parameter(torch.zeros(2, dtype=F64))

        def objective(self) -> torch.Tensor:
            return self.lam * self.w

        def solve(self) -> NotScalar:
            return self

    model = NotScalar(lam).solve()
    with pytest.raises(ValueError, match="objective must return a scalar"):
        model.w.sum().backward()
    with pytest.raises(TypeError, match="linear_solve"):

        class BadSolver(diff.ImplicitMetaGradientModule, linear_solve="cg"):  # type: ignore[arg-type]
            pass


def test_meta_gradient_module_registration() -> None:
    prior = torch.zeros(2, requires_grad=True)
    meta_net = nn.Linear(2, 2)

    class Inner(diff.MetaGradientModule):
        def __init__(self, prior: torch.Tensor, meta_net: nn.Module) -> None:
            super().__init__()
            self.prior = prior
            self.meta_net = meta_net
            self.own = nn.Linear(2, 2)
            self.scale = torch.ones(2)  # no grad: a plain attribute
            self.register_meta_parameter("extra", torch.ones(1, requires_grad=True))

    inner = Inner(prior, meta_net)
    assert inner.prior is prior and inner.meta_net is meta_net
    assert {n for n, _ in inner.named_parameters()} == {"own.weight", "own.bias"}
    assert [n for n, _ in inner.named_meta_parameters()] == [
        "prior",
        "extra",
        "meta_net.weight",
        "meta_net.bias",
    ]
    assert len(list(inner.meta_parameters())) == 4
    assert isinstance(inner.scale, torch.Tensor) and "scale" not in dict(
        inner.named_meta_parameters()
    )
    del inner.prior
    assert "prior" not in dict(inner.named_meta_parameters())
    with pytest.raises(ValueError, match="already a parameter"):
        inner.register_meta_parameter("own", torch.ones(1))
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        inner.register_meta_module("bad", torch.ones(1))  # type: ignore[arg-type]


def test_reparametrize() -> None:
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    net[1].weight = net[0].weight
    original = net[0].weight
    eye = torch.eye(2)
    x = torch.tensor([[1.0, 2.0]])
    with diff.reparametrize(net, {"0.weight": eye}):
        assert net[1].weight is eye  # the tied slot follows
        torch.testing.assert_close(net(x), x)
    assert net[0].weight is original and net[1].weight is original
    with pytest.raises(ValueError, match="unknown names"):
        with diff.reparametrize(net, {"2.weight": eye}):
            pass
    with pytest.raises(ValueError, match="missing parameters"):
        with diff.reparametrize(nn.Linear(2, 2), {"weight": eye}):
            pass
