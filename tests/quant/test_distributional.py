"""quantize / dequantize: every dist, the searches, zero, n, packbits, groups and edge cases."""

from __future__ import annotations

import math

import pytest
import torch

import optiquant.quant.distributional as D
from optiquant.quant.codebook import Encoder, gaussian_lloyd_max
from optiquant.quant.distributional import DISTS, METHODS, dequantize, dist_codebook, quantize


def _randn(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean())


X = _randn(20_000).abs_().add_(0.01)  # positive, so the exponential dists are meaningful too


# Reference companding quantizer written from distquant's documented formulas (float64):
# index = floor(n * G(z / beta)) with z = (x - loc) / scale, decoded at beta * Ginv((i + 1/2) / n).
def _reference_codes(x: torch.Tensor, dist: str, n: int, beta: float) -> torch.Tensor:
    x = x.double()
    mean, std = x.mean(), x.std()
    norm = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    if dist.startswith("gaussian"):
        loc, scale = mean, std
    elif dist.startswith("logistic"):
        loc, scale = mean, std * math.sqrt(3) / math.pi
    elif dist.startswith("gumbel"):
        scale = std * math.sqrt(6) / math.pi
        loc = mean - 0.5772156649015329 * scale
    else:  # exponential
        loc, scale = torch.tensor(0.0, dtype=torch.float64), std
    t = (x - loc) / scale / beta
    cdf = {
        "gaussian": lambda t: norm.cdf(t / math.sqrt(2)),
        "gaussian_cdf": norm.cdf,
        "logistic": lambda t: 2 / math.pi * torch.atan(torch.exp(t / 2)),
        "logistic_cdf": torch.sigmoid,
        "gumbel": lambda t: torch.erfc(torch.exp(-t / 2) / math.sqrt(2)),
        "gumbel_cdf": lambda t: torch.exp(-torch.exp(-t)),
        "exponential": lambda t: 1 - torch.exp(-t.clamp(min=0) / 2),
        "exponential_cdf": lambda t: 1 - torch.exp(-t.clamp(min=0)),
    }[dist]
    return torch.floor(n * cdf(t)).clamp(0, n - 1).long()


@pytest.mark.parametrize("dist", [d for d in DISTS if d != "cauchy_cdf"])
def test_codes_follow_distquant_companding(dist: str) -> None:
    n, beta = 16, 1.3
    q, info = quantize(X, n=n, dist=dist, beta=beta, packbits=False)
    ref = _reference_codes(X, dist, n, beta)
    assert info["dist"] == dist and info["beta"] == beta
    assert q.dtype == torch.uint8 and q.shape == X.shape
    # identical except for values within float rounding of a bin edge
    assert int((q.long() != ref).sum()) <= 2
    levels, _ = dist_codebook(dist, n, beta)
    y = dequantize(q, **info)
    expect = info["loc"] + info["scale"] * levels[q.long()]
    assert torch.allclose(y.double(), expect, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dist", METHODS)
@pytest.mark.parametrize("packbits", [True, False])
def test_every_method_round_trips_and_searches_by_mse(dist: str, packbits: bool) -> None:
    x = _randn(8192, seed=3)
    if dist.startswith("exponential"):
        x = x.abs()
    q, info = quantize(x, k=3, dist=dist, packbits=packbits)
    y = dequantize(q, **info)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert q.dtype == (torch.int64 if packbits else torch.uint8)
    searched = _mse(x, y)
    if dist not in ("lloyd", "uniform"):
        q1, info1 = quantize(x, k=3, dist=dist, beta=1.0, packbits=packbits)
        assert searched <= _mse(x, dequantize(q1, **info1)) * (1 + 1e-9)
    # 3 bits never do worse than 3 levels of the range factor extremes
    assert searched < float(x.var())


def test_packbits_on_and_off_decode_identically() -> None:
    x = _randn(5003, seed=4).reshape(1, 5003)
    for k in (1, 2, 3, 4, 5, 7, 8, 13, 16):
        dist, beta = ("lloyd", None) if k <= 8 else ("gaussian", 1.2)
        qp, ip = quantize(x, k=k, dist=dist, beta=beta, packbits=True)
        qr, ir = quantize(x, k=k, dist=dist, beta=beta, packbits=False)
        assert qp.numel() == -(-x.numel() // (64 // k))
        assert torch.equal(dequantize(qp, **ip), dequantize(qr, **ir))


def test_dequantize_does_not_modify_codes() -> None:
    q, info = quantize(_randn(1000), k=4)
    before = q.clone()
    first = dequantize(q, **info)
    second = dequantize(q, **info)
    assert torch.equal(q, before) and torch.equal(first, second)


def test_beta_search_minimises_mse_not_mae() -> None:
    x = _randn(50_000, seed=5)
    _, i_mse = quantize(x, k=4, dist="gaussian")
    _, i_mae = quantize(x, k=4, dist="gaussian", objective="mae")
    qm, im = quantize(x, k=4, dist="gaussian", beta=i_mse["beta"])
    qa, ia = quantize(x, k=4, dist="gaussian", beta=i_mae["beta"])
    ym, ya = dequantize(qm, **im), dequantize(qa, **ia)
    assert _mse(x, ym) <= _mse(x, ya)
    assert float((x - ya).abs().mean()) <= float((x - ym).abs().mean())
    # the MSE search beats distquant's gaussian at beta=1 (1.11x the optimum at k=4)
    _, opt = gaussian_lloyd_max(16)
    assert _mse(x, ym) < 1.08 * opt


def test_dist_none_picks_lowest_error_and_respects_beta() -> None:
    x = _randn(20_000, seed=6)
    q, info = quantize(x, k=3, dist=None)
    assert info["dist"] in DISTS
    best = _mse(x, dequantize(q, **info))
    for d in DISTS:
        qd, idd = quantize(x, k=3, dist=d)
        assert best <= _mse(x, dequantize(qd, **idd)) * 1.01
    _, fixed = quantize(x, k=3, dist=None, beta=0.9)
    assert fixed["beta"] == 0.9


@pytest.mark.parametrize("k", range(1, 9))
def test_lloyd_is_within_one_percent_of_lloyd_max(k: int) -> None:
    x = _randn(1 << 17, seed=7)
    q, info = quantize(x, k=k, dist="lloyd")
    _, opt = gaussian_lloyd_max(2**k)
    assert _mse(x, dequantize(q, **info)) <= 1.01 * opt * float(x.var())


@pytest.mark.parametrize("dist", METHODS)
@pytest.mark.parametrize("n", [15, 16])
def test_zero_is_reconstructed_exactly(dist: str, n: int) -> None:
    x = _randn(4000, seed=8)
    if dist.startswith("exponential"):
        x = x.abs()
    x[::7] = 0.0
    q, info = quantize(x, n=n, dist=dist, zero=0.0)
    y = dequantize(q, **info)
    assert bool((y[x == 0] == 0).all())
    # the same with per-group scales
    qg, ig = quantize(x, n=n, dist=dist, zero=0.0, group_size=64)
    assert bool((dequantize(qg, **ig)[x == 0] == 0).all())


def test_nonzero_zero_value_is_exact() -> None:
    x = _randn(3000, seed=9) + 0.25
    x[::5] = 0.25
    q, info = quantize(x, k=2, dist="gaussian", zero=0.25)
    assert bool((dequantize(q, **info)[x == 0.25] == 0.25).all())


def test_n_points_use_ceil_log2_bits() -> None:
    x = _randn(999, seed=10)
    q, info = quantize(x, n=5, dist="logistic_cdf")
    assert info["bits"] == 3 and q.numel() == -(-999 // 21)
    codes, _ = quantize(x, n=5, dist="logistic_cdf", packbits=False)
    assert int(codes.max()) <= 4
    q1, i1 = quantize(x, n=1)
    assert torch.allclose(dequantize(q1, **i1), torch.full_like(x, float(x.mean())), atol=1e-6)


def test_group_size_fits_scales_per_group() -> None:
    g = torch.Generator().manual_seed(11)
    rows = torch.randn(64, 100, generator=g) * torch.logspace(-3, 1, 64)[:, None]
    x = rows.reshape(-1)[:-37]  # a partial last group
    q, info = quantize(x, k=3, dist="lloyd", group_size=100)
    qt, it = quantize(x, k=3, dist="lloyd")
    y, yt = dequantize(q, **info), dequantize(qt, **it)
    rel = ((y - x) ** 2).reshape(-1)[:6300].reshape(63, 100).sum(1) / (x[:6300] ** 2).reshape(
        63, 100
    ).sum(1)
    assert float(rel.max()) < 0.1  # every group gets a 3-bit quality, small ones included
    assert _mse(x, y) < _mse(x, yt)
    assert info["loc"].numel() == 64 and info["scale"].numel() == 64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_are_kept(dtype: torch.dtype) -> None:
    x = _randn(3000, seed=12).to(dtype)
    q, info = quantize(x, k=8, dist="lloyd")
    y = dequantize(q, **info)
    assert y.dtype == dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float64: 1e-3}[dtype]
    assert float((y.double() - x.double()).abs().max()) < tol * 30


def test_k16_is_nearly_lossless() -> None:
    x = _randn(20_000, seed=13, dtype=torch.float64)
    q, info = quantize(x, k=16, dist="gaussian", beta=1.2)
    assert _mse(x, dequantize(q, **info)) < 1e-8
    assert q.numel() == 20_000 // 4


def test_non_contiguous_input() -> None:
    w = _randn(60 * 40, seed=14).reshape(60, 40)
    q1, i1 = quantize(w.t(), k=4, dist="lloyd")
    q2, i2 = quantize(w.t().contiguous(), k=4, dist="lloyd")
    assert torch.equal(dequantize(q1, **i1), dequantize(q2, **i2))
    assert dequantize(q1, **i1).shape == (40, 60)


def test_constant_and_empty_tensors() -> None:
    c = torch.full((3, 5), 0.1)
    for dist in METHODS:
        q, info = quantize(c, k=3, dist=dist)
        assert torch.equal(dequantize(q, **info), c)
    e = torch.zeros(0, 4)
    q, info = quantize(e, k=4)
    assert q.numel() == 0 and dequantize(q, **info).shape == (0, 4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_raise(bad: float) -> None:
    x = _randn(100)
    x[3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize(x, k=4)


def test_outliers_never_wrap_around() -> None:
    x = _randn(100_000, seed=15)
    x[0], x[1] = 40.0, -40.0  # far beyond where a float32 CDF saturates
    for dist in DISTS:
        q, info = quantize(x, k=4, dist=dist, beta=1.0)
        y = dequantize(q, **info)
        assert float(y[0]) >= float(y.max()) - 1e-6 and float(y[1]) <= float(y.min()) + 1e-6


def test_bad_arguments() -> None:
    x = _randn(10)
    with pytest.raises(ValueError, match="exactly one"):
        quantize(x)
    with pytest.raises(ValueError, match="exactly one"):
        quantize(x, k=2, n=4)
    with pytest.raises(ValueError, match="k must be in"):
        quantize(x, k=0)
    with pytest.raises(ValueError, match="k must be in"):
        quantize(x, k=17)
    with pytest.raises(ValueError, match="n must be in"):
        quantize(x, n=0)
    with pytest.raises(ValueError, match="dist must be"):
        quantize(x, k=2, dist="normal")
    with pytest.raises(ValueError, match="beta must be"):
        quantize(x, k=2, beta=0.0)
    with pytest.raises(ValueError, match="beta does not apply"):
        quantize(x, k=2, dist="lloyd", beta=1.0)
    with pytest.raises(ValueError, match="group_size"):
        quantize(x, k=2, group_size=0)
    with pytest.raises(TypeError, match="floating-point"):
        quantize(torch.arange(10), k=2)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        quantize([1.0, 2.0], k=2)  # type: ignore[arg-type]
    q, info = quantize(x, k=4)
    with pytest.raises(ValueError, match="packed words"):
        dequantize(q[:-1], **info)
    with pytest.raises(TypeError, match="unexpected info keys"):
        dequantize(q, **info, colour="red")
    qr, ir = quantize(x, k=4, packbits=False)
    with pytest.raises(ValueError, match="codes must lie"):
        dequantize(qr.long() + 16, **ir)


def _generic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the device-independent torch path (no CPU chunk loops)."""
    monkeypatch.setattr(D, "_encode_cpu", lambda *args, **kwargs: None)
    monkeypatch.setattr(D, "_decode_cpu", lambda *args, **kwargs: None)


# Sizes that cross the CPU chunk boundaries and end inside a packed word.
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 7, 8, 9, 16])
@pytest.mark.parametrize("packbits", [True, False])
def test_cpu_fast_path_equals_generic_path(
    k: int, packbits: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _randn(600_001, seed=40 + k) * 2.5 + 0.3
    x[:3] = torch.tensor([80.0, -80.0, 0.0])  # far outside the thresholds
    q, info = quantize(x, k=k, beta=1.1, packbits=packbits)
    y = dequantize(q, **info)
    with monkeypatch.context() as mp:
        _generic(mp)
        q0, info0 = quantize(x, k=k, beta=1.1, packbits=packbits)
        y0 = dequantize(q0, **info0)
        y_mixed = dequantize(q, **info)  # generic decoder, fast codes
    assert q.dtype == q0.dtype and torch.equal(q, q0)
    assert torch.equal(y, y0) and torch.equal(y_mixed, y0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_cpu_fast_path_equals_generic_path_other_dtypes(
    dtype: torch.dtype, k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _randn(300_007, seed=50 + k).to(dtype)
    q, info = quantize(x, k=k, beta=1.0)
    y = dequantize(q, **info)
    with monkeypatch.context() as mp:
        _generic(mp)
        q0, info0 = quantize(x, k=k, beta=1.0)
        y0 = dequantize(q0, **info0)
    assert torch.equal(q, q0) and y.dtype == dtype and torch.equal(y, y0)


def test_threaded_chunks_give_the_same_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D, "_CHUNK_COUNT", 1 << 14)  # many chunks: two workers take part
    x = _randn(700_003, seed=60)
    assert D._workers(x.numel(), 1 << 14) == 1  # one torch thread here
    for k in (2, 3, 8):
        _, th = dist_codebook("gaussian", 1 << k, 1.0)
        enc = Encoder(th)
        a, b = (float(torch.tensor(v, dtype=torch.float32)) for v in enc.affine(0.1, 0.9))
        one = D._encode_cpu(x, enc, a, b, k, True, torch.float32)
        torch.set_num_threads(2)  # conftest restores the setting
        two = D._encode_cpu(x, enc, a, b, k, True, torch.float32)
        torch.set_num_threads(1)
        assert one is not None and two is not None and torch.equal(one, two)


def test_nearly_constant_large_tensor_is_not_constant() -> None:
    x = torch.zeros(1 << 20)
    x[12345] = 1.0  # missed by the strided probe: the range decides
    q, info = quantize(x, k=2, beta=1.0)
    y = dequantize(q, **info)
    assert float(y[12345]) > float(y[0])
    c = torch.full((1 << 20,), 0.1)
    q, info = quantize(c, k=2, beta=1.0)
    assert torch.equal(dequantize(q, **info), c)
