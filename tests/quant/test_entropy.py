"""Entropy coding of codes: exact rANS round trips, sizes against the entropy, the R(D) bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optiquant.quant.distributional import quantize
from optiquant.quant.entropy import (
    RansStream,
    code_entropy,
    gaussian_rd_bits,
    rans_decode,
    rans_encode,
    size_report,
)


@pytest.mark.parametrize("numel", [1, 2, 1000, 4097, 50_000])
@pytest.mark.parametrize("n", [2, 16, 300])
def test_rans_round_trip_is_exact(numel: int, n: int) -> None:
    g = torch.Generator().manual_seed(numel + n)
    # a skewed distribution, with some symbols never used
    codes = (torch.randn(numel, generator=g).abs() * n / 6).long().clamp(max=n - 1)
    stream = rans_encode(codes, n)
    assert np.array_equal(rans_decode(stream), codes.numpy())


def test_rans_size_is_close_to_the_entropy() -> None:
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(1))
    q, _ = quantize(x, k=4, dist="lloyd", packbits=False)
    h = code_entropy(q, 16)
    bits = 8 * rans_encode(q, 16).nbytes / q.numel()
    # order-0 entropy of Lloyd-Max indices on N(0,1) is 3.765 bits; rANS adds table and states
    assert h == pytest.approx(3.765, abs=0.01)
    assert h <= bits <= h + 0.02


def test_entropy_and_rd_bound() -> None:
    assert code_entropy(torch.tensor([3, 3, 3]), 4) == 0.0
    assert code_entropy(torch.tensor([0, 1]), 2) == 1.0
    assert gaussian_rd_bits(0.25, 1.0) == 1.0
    assert gaussian_rd_bits(2.0, 1.0) == 0.0
    assert math.isinf(gaussian_rd_bits(0.0, 1.0))


def test_size_report_orders_the_sizes() -> None:
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(2))
    q, info = quantize(x, k=3, dist="lloyd", packbits=False)
    from optiquant.quant.distributional import dequantize

    mse = float(((dequantize(q, **info) - x) ** 2).mean())
    r = size_report(q, 8, mse=mse, variance=float(x.var()))
    assert r["rd_bound"] < r["entropy"] <= r["rans"] < r["fixed"] == 3.0


def test_bad_input_and_corruption() -> None:
    with pytest.raises(ValueError, match="lie in"):
        rans_encode(torch.tensor([0, 5]), 4)
    with pytest.raises(TypeError, match="integers"):
        rans_encode(torch.tensor([0.5]), 4)
    s = rans_encode(torch.tensor([0, 1, 2, 3] * 500), 4)
    bad = RansStream(s.words, s.states, s.freqs + 1, s.precision, s.numel)
    with pytest.raises(ValueError, match="corrupted"):
        rans_decode(bad)
    short = RansStream(s.words[:1], s.states, s.freqs, s.precision, s.numel)
    with pytest.raises(ValueError, match="ends early"):
        rans_decode(short)
