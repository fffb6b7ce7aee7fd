"""Zero-order gradient estimates against the true gradient, with statistical bounds.

The test function is a quadratic f(theta) = 0.5 theta^T C theta + b^T theta (C diagonal),
split over two leaves. Gaussian smoothing does not bias its gradient, so every method's
estimate has mean exactly grad f(theta). Each test draws R independent estimates (fixed
seed) and requires |mean - grad| <= 5 standard errors (the spread of the R estimates / sqrt(R))
for every coordinate, and the bound to be tight enough (5 standard errors < max|grad| / 2)
that a wrong scale (such as an estimate off by a factor sigma^2) cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diff_helpers import F64

import optiquant.diff as diff

C = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0], dtype=F64)
B = torch.tensor([0.5, -1.0, 1.0, 0.0, -0.5], dtype=F64)
THETA = torch.tensor([0.5, 0.25, -1.0, 0.75, -0.5], dtype=F64)
TRUE_GRAD = C * THETA + B
REPEATS = 30


def _quadratic(params: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    theta = torch.cat([params[0], params[1]])
    return 0.5 * (C * theta * theta).sum() + (B * theta).sum()


def _split(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return theta[:2].clone().requires_grad_(), theta[2:].clone().requires_grad_()


def _assert_unbiased(estimates: torch.Tensor) -> None:
    mean = estimates.mean(0)
    stderr = estimates.std(0) / REPEATS**0.5
    assert ((mean - TRUE_GRAD).abs() <= 5 * stderr).all(), (mean, TRUE_GRAD, stderr)
    assert (5 * stderr < 0.5 * TRUE_GRAD.abs().max()).all()


def _estimates(fn, num_samples: int) -> torch.Tensor:
    rows = []
    for _ in range(REPEATS):
        params = _split(THETA)
        grads = torch.autograd.grad(fn(params), params)
        rows.append(torch.cat(grads))
    return torch.stack(rows)


@pytest.mark.parametrize(
    "method, sigma, num_samples",
    [("naive", 1.0, 400), ("forward", 0.1, 100), ("antithetic", 0.1, 50)],
)
def test_estimates_are_unbiased(method: str, sigma: float, num_samples: int) -> None:
    torch.manual_seed(0)
    distribution = torch.distributions.Normal(
        torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    )
    fn = diff.zero_order(distribution, method=method, num_samples=num_samples, sigma=sigma)(
        _quadratic
    )
    _assert_unbiased(_estimates(fn, num_samples))


def test_callable_distribution_and_module() -> None:
    torch.manual_seed(1)

    class Quadratic(diff.ZeroOrderGradientModule, method="antithetic", num_samples=50, sigma=0.1):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Parameter(THETA[:2].clone())
            self.tail = torch.nn.Parameter(THETA[2:].clone())

        def forward(self, scale: float) -> torch.Tensor:
            return scale * _quadratic((self.head, self.tail))

        def sample(self, sample_shape: torch.Size) -> torch.Tensor:
            return torch.randn(sample_shape, dtype=F64)

    model = Quadratic()
    rows = []
    for _ in range(REPEATS):
        grads = torch.autograd.grad(model(2.0), [model.head, model.tail])
        rows.append(torch.cat(grads) / 2.0)
    _assert_unbiased(torch.stack(rows))


def _rademacher(shape: torch.Size) -> torch.Tensor:
    return torch.randint(0, 2, shape, dtype=F64) * 2 - 1


def test_forward_difference_has_the_right_scale() -> None:
    """On a linear function with sign noise in one dimension, 'forward' and 'antithetic' are
    exact for every sigma (a sigma^2 scale error would show at once)."""
    torch.manual_seed(2)
    for method in ("forward", "antithetic"):
        for sigma in (0.01, 0.1, 3.0):
            fn = diff.zero_order(_rademacher, method=method, sigma=sigma)(lambda x: 3.0 * x.sum())
            x = torch.tensor([1.0], dtype=F64, requires_grad=True)
            (grad,) = torch.autograd.grad(2.0 * fn(x), x)  # the upstream gradient scales it
            torch.testing.assert_close(grad, torch.tensor([6.0], dtype=F64), rtol=1e-12, atol=1e-12)


def test_non_differentiable_objective() -> None:
    """The objective leaves torch (numpy); the estimate still follows its gradient."""
    torch.manual_seed(3)

    @diff.zero_order(
        torch.distributions.Normal(0.0, 1.0), method="antithetic", num_samples=2000, sigma=0.05
    )
    def outside_torch(x: torch.Tensor) -> torch.Tensor:
        values = np.asarray(x.detach().tolist())
        return torch.tensor(float(np.sum(values**2)))

    x = torch.tensor([1.0, -2.0], requires_grad=True)
    (grad,) = torch.autograd.grad(outside_torch(x), x)
    # antithetic on a quadratic: per-sample (g.z) z, std per coordinate sqrt(|g|^2 + g_j^2) <= 6.4
    assert ((grad - torch.tensor([2.0, -4.0])).abs() <= 5 * 6.4 / 2000**0.5).all()


def test_only_argnums_get_gradients() -> None:
    fn = diff.zero_order(_rademacher, method="antithetic", argnums=1)(lambda c, x: (c * x).sum())
    c = torch.tensor([2.0], dtype=F64, requires_grad=True)
    x = torch.tensor([1.0], dtype=F64, requires_grad=True)
    gc, gx = torch.autograd.grad(fn(c, x), (c, x), allow_unused=True)
    assert gc is None
    torch.testing.assert_close(gx, torch.tensor([2.0], dtype=F64))
    with torch.no_grad():
        assert fn(c, x).grad_fn is None


def test_bad_input() -> None:
    normal = torch.distributions.Normal(0.0, 1.0)
    with pytest.raises(ValueError, match="method"):
        diff.zero_order(normal, method="central")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_samples"):
        diff.zero_order(normal, num_samples=0)
    with pytest.raises(ValueError, match="sigma"):
        diff.zero_order(normal, sigma=0.0)
    with pytest.raises(TypeError, match="distribution"):
        diff.zero_order(3.0)  # type: ignore[arg-type]
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="scalar"):
        diff.zero_order(normal)(lambda v: v * 2)(x)
    with pytest.raises(ValueError, match="argnums"):
        diff.zero_order(normal, argnums=1)(lambda v: v.sum())(x)
    with pytest.raises(TypeError, match="argument 0"):
        diff.zero_order(normal)(lambda v: v[0].sum())([x, "y"])
    wrong_shape = diff.zero_order(lambda shape: torch.zeros(2))(lambda v: v.sum())
    with pytest.raises(ValueError, match="shape"):
        wrong_shape(x).backward()
    with pytest.raises(ValueError, match="num_samples"):

        class Bad(diff.ZeroOrderGradientModule, num_samples=-1):
            pass
