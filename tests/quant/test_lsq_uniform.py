"""LSQ's gradients and step size, uniform QAT's straight-through estimator."""

from __future__ import annotations

import math

import pytest
import torch

import optiquant.quant as oq
from optiquant.quant.lsq import lsq_init_scale


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_lsq_gradients_closed_form(bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(300, dtype=torch.float64, generator=gen, requires_grad=True)
    s = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(300, dtype=torch.float64, generator=gen)
    out = oq.lsq_fake_quantize(w, s, bits)
    out.backward(g)
    qn, qp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    v = w.detach() / s.detach()
    inside = (v >= qn) & (v <= qp)
    q = v.clamp(qn, qp).round()
    torch.testing.assert_close(out.detach(), q * s.detach(), rtol=0, atol=0)
    torch.testing.assert_close(w.grad, g * inside, rtol=0, atol=0)
    dq = torch.where(inside, q - v, q)  # -v + round(v) inside, the bound outside
    expected_s = (g * dq).sum() / math.sqrt(300 * max(qp, 1))
    torch.testing.assert_close(s.grad, expected_s, rtol=1e-12, atol=1e-12)


def test_lsq_init_scale_matches_paper() -> None:
    w = torch.randn(1000)
    for bits in (2, 4, 8):
        qp = 2 ** (bits - 1) - 1
        assert lsq_init_scale(w, bits) == pytest.approx(2 * w.abs().mean().item() / math.sqrt(qp))
    assert lsq_init_scale(torch.zeros(5), 4) == 1.0


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lsq_train_forward_equals_eval_bitwise(bits: int) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 16)
    quantizer = oq.LSQ(model, bits=bits, min_size=0)
    quantizer.no_optimizer()
    x = torch.randn(5, 64)
    model.train()
    train_out = model(x)
    model.eval()
    assert torch.equal(train_out, model(x))


def test_lsq_learns_step_size() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64, bias=False)
    target = torch.nn.Linear(64, 64, bias=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    quantizer = oq.LSQ(model, bits=3, min_size=0)
    quantizer.setup_optimizer(opt, lr=1e-2)
    start = model.weight_lsq.detach().clone()
    x = torch.randn(64, 64)
    for _ in range(5):
        loss = (model(x) - target(x)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(model.weight_lsq.detach(), start)


def test_uniform_qat_straight_through() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 8)
    quantizer = oq.UniformQuantizer(model, bits=2, qat=True, min_size=0)
    x = torch.randn(4, 32)
    model.train()
    out = model(x)
    g = torch.randn_like(out)
    out.backward(g)
    # The weight gradient is the one of a linear layer with the quantized weight.
    assert torch.equal(model.weight.grad, g.t() @ x)
    w = quantizer.quantized_weights()
    torch.testing.assert_close(out, x @ w["weight"].t() + w["bias"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [1, 3, 8, 16])
def test_fake_quantize_uniform_on_grid(bits: int) -> None:
    w = torch.randn(1000)
    q = oq.fake_quantize_uniform(w, bits)
    lo, hi = w.min(), w.max()
    step = (hi - lo) / (2**bits - 1)
    levels = (q - lo) / step
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-2)
    assert (q - w).abs().max() <= step / 2 + 1e-6
