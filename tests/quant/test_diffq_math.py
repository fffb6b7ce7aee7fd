"""DiffQ's parametrisation, size penalty gradient and noise statistics."""

from __future__ import annotations

import math

import pytest
import torch

import optiquant.quant as oq

MB = 2**20


def _model(n_in: int = 64, n_out: int = 32, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(n_in, n_out, bias=False).to(dtype)


@pytest.mark.parametrize("param", ["bits", "noise"])
@pytest.mark.parametrize("init_bits", [3.0, 8.0, 13.5])
def test_init_bits_exact(param: str, init_bits: float) -> None:
    model = _model()
    q = oq.DiffQuantizer(model, min_size=0, group_size=8, param=param, init_bits=init_bits)
    bits = q.get_bits(model.weight_diffq)
    torch.testing.assert_close(bits, torch.full_like(bits, init_bits), rtol=0, atol=1e-9)


def _analytic_dbits(q: oq.DiffQuantizer, logit: torch.Tensor) -> torch.Tensor:
    cfg = q.config
    t = torch.sigmoid(logit)
    dt = t * (1 - t)
    if cfg.param == "bits":
        return (cfg.max_bits - cfg.min_bits) * dt
    u_min, u_max = 1 / (2**cfg.max_bits - 1), 1 / (2**cfg.min_bits - 1)
    u = torch.exp(t * math.log(u_min) + (1 - t) * math.log(u_max))
    du = u * (math.log(u_min) - math.log(u_max)) * dt
    return -du / (math.log(2) * u * (1 + u))


@pytest.mark.parametrize("param", ["bits", "noise"])
@pytest.mark.parametrize("group_size", [1, 8, 0])
def test_model_size_gradient_is_analytic(param: str, group_size: int) -> None:
    model = _model()
    q = oq.DiffQuantizer(model, min_size=0, group_size=group_size, param=param)
    with torch.no_grad():
        model.weight_diffq.uniform_(-2, 2)
    size = q.model_size()
    size.backward()
    gs = group_size or model.weight.numel()
    expected = gs / (8 * MB) * _analytic_dbits(q, model.weight_diffq.detach())
    torch.testing.assert_close(model.weight_diffq.grad, expected, rtol=1e-10, atol=1e-18)


def test_model_size_value() -> None:
    model = _model(dtype=torch.float32)
    q = oq.DiffQuantizer(model, min_size=0, group_size=8, init_bits=8)
    # 2048 weights at 8 bits, one range (2 float32), all widths equal (0 bits per group).
    expected = (2048 * 8 / 8 + 8) / MB
    assert float(q.model_size().detach()) == pytest.approx(expected, rel=1e-6)
    assert q.true_model_size() == pytest.approx(expected, rel=0)
    with torch.no_grad():
        model.weight_diffq[:5] = 10.0  # some groups at ~15 bits: widths need storage
    widths = q.get_widths()["weight"]
    spread = int(widths.max() - widths.min())
    width_bits = spread.bit_length()
    exact = (8 * int(widths.sum()) + width_bits * widths.numel() + 64) / 8 / MB
    assert float(q.model_size(exact=True).detach()) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_model_size_for_the_whole_model_equals_the_per_tensor_sum(dtype: torch.dtype) -> None:
    """The few-operation size of ``param="bits"`` equals the generic per-tensor sum
    (value and gradient), with several tensors, group sizes, extra bits and widths
    that need per-group storage, in training (sigmoids reused) and eval."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 40), torch.nn.Linear(40, 3)
    ).to(dtype)
    q = oq.DiffQuantizer(model, min_size=0, group_size=8, extra_bits=1)
    q.no_optimizer()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_diffq"):
                p.uniform_(-3, 3)
    logits = [p for n, p in model.named_parameters() if n.endswith("_diffq")]
    for train in (True, False):
        model.train(train)
        model(torch.randn(5, 64, dtype=dtype))  # a training forward records its sigmoids
        fast = q.model_size()
        generic = oq.BaseQuantizer.model_size(q)
        torch.testing.assert_close(
            fast, generic, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0
        )
        g_fast = torch.autograd.grad(fast, logits)
        g_generic = torch.autograd.grad(generic, logits)
        for a, b in zip(g_fast, g_generic):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
@pytest.mark.parametrize("bits", [2.5, 4.0, 9.0])
@pytest.mark.parametrize("fast_noise", [False, True])
def test_noise_variance_matches_paper(noise: str, bits: float, fast_noise: bool) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(512, 400, bias=False)
    q = oq.DiffQuantizer(
        model, min_size=0, group_size=8, noise=noise, init_bits=bits, fast_noise=fast_noise
    )
    q.no_optimizer()
    model.train()
    captured = {}

    def grab(module, args):
        captured["w"] = module.weight.detach().clone()

    handle = model.register_forward_pre_hook(grab)
    model(torch.zeros(1, 512))
    handle.remove()
    w = model.weight.detach()
    delta = (w.max() - w.min()) / (2**bits - 1)
    diff = captured["w"] - w
    var = diff.var().item()
    expected = delta.item() ** 2 / (4 if noise == "gaussian" else 12)
    # 204,800 samples: the variance estimate has a relative std below 0.5%.
    assert var == pytest.approx(expected, rel=0.03)
    assert abs(diff.mean().item()) < 4 * math.sqrt(expected / diff.numel())
    if noise == "uniform":
        assert diff.abs().max().item() <= delta.item() / 2 * (1 + 1e-5)


def test_noise_gradients_finite_differences() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    u = torch.rand(6, dtype=torch.float64, generator=gen).mul(0.3).requires_grad_()

    eps = torch.randn(24, dtype=torch.float64, generator=gen)

    def fn(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return oq.pseudo_quantization_noise(w, u, "gaussian", eps=eps)

    assert torch.autograd.gradcheck(fn, (w, u), eps=1e-6, atol=1e-8)


def test_training_forward_is_noisy_eval_is_not() -> None:
    model = _model(dtype=torch.float32)
    q = oq.DiffQuantizer(model, min_size=0, group_size=8, init_bits=4)
    q.no_optimizer()
    x = torch.randn(3, 64)
    before = model.weight.detach().clone()
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    assert torch.equal(model.weight, before)


def test_penalty_lowers_bits_and_bits_not_decayed() -> None:
    model = _model(dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    q = oq.DiffQuantizer(model, min_size=0, group_size=8)
    q.setup_optimizer(opt)
    group = opt.param_groups[-1]
    assert group["params"] == [model.weight_diffq]
    assert group["weight_decay"] == 0.0 and group["lr"] == 1e-3
    assert all(model.weight_diffq is not p for g in opt.param_groups[:-1] for p in g["params"])
    x = torch.randn(8, 64)
    for _ in range(3):
        loss = model(x).square().mean() + 1e3 * q.model_size()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(q.get_bits(model.weight_diffq).max().detach()) < 8.0 - 2e-3


@pytest.mark.parametrize("param", ["bits", "noise"])
def test_noise_scale_gradient(param: str) -> None:
    model = _model()
    q = oq.DiffQuantizer(model, min_size=0, group_size=8, param=param)
    logit = torch.linspace(-4, 4, 17, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(q.get_noise_scale, (logit,), eps=1e-6, atol=1e-10)
    bits = q.get_bits(logit.detach())
    torch.testing.assert_close(q.get_noise_scale(logit.detach()), 1 / (2**bits - 1))


@pytest.mark.parametrize("n", [1, 7, 255, 256, 257, 4096, 5000])
def test_extreme_indices(n: int) -> None:
    from optiquant.quant.diffq import _extremes

    gen = torch.Generator().manual_seed(n)
    for _ in range(5):
        flat = torch.randn(n, generator=gen)
        lo, hi, imin, imax = _extremes(flat)
        assert int(imax) == int(torch.argmax(flat)) and int(imin) == int(torch.argmin(flat))
        assert lo == flat.min() and hi == flat.max()


def test_noise_gradients_partial_group() -> None:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(10, dtype=torch.float64, generator=gen, requires_grad=True)
    u = torch.rand(4, dtype=torch.float64, generator=gen).mul(0.3).requires_grad_()
    eps = torch.randn(10, dtype=torch.float64, generator=gen)

    def fn(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return oq.pseudo_quantization_noise(w, u, "uniform", eps=eps)

    assert torch.autograd.gradcheck(fn, (w, u), eps=1e-6, atol=1e-8)
    out = fn(w, u).detach()
    span = (w.max() - w.min()).detach()
    amp = (u.detach() * span).repeat_interleave(3)[:10]
    torch.testing.assert_close(out, w.detach() + amp * eps)


def test_fast_noise_samples_are_independent_and_standard() -> None:
    from optiquant.quant.noise import HashNoise

    torch.manual_seed(0)
    n = 1_000_000
    for kind, var in (("gaussian", 1.0), ("uniform", 1 / 12)):
        x = HashNoise.draw(kind).samples(n, torch.float64, torch.device("cpu"))
        # Sample moments within about 5 standard errors.
        assert abs(x.mean().item()) < 5 * math.sqrt(var / n)
        assert x.var().item() == pytest.approx(var, rel=0.01)
        for lag in (1, 2, 3, 4, 5):
            corr = torch.corrcoef(torch.stack([x[:-lag], x[lag:]]))[0, 1].item()
            assert abs(corr) < 5 / math.sqrt(n)
    g = HashNoise.draw("gaussian").samples(n, torch.float64, torch.device("cpu"))
    kurtosis = (g.pow(4).mean() / g.pow(2).mean().square()).item()
    assert kurtosis == pytest.approx(3.0, abs=0.03)
