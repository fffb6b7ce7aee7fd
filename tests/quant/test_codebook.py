"""Codebooks: the Gaussian Lloyd-Max table, sorted-sample statistics, Lloyd iterations, encoder."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from optiquant.quant.codebook import (
    Encoder,
    SortedSample,
    gaussian_lloyd_max,
    lloyd_max,
    midpoints,
)
from optiquant.quant.distributional import dist_codebook

# Published optimal MSE of the n-level scalar quantizer of N(0, 1) (Max 1960; recomputed
# to 6 digits in the project's research notes).
LLOYD_MAX_MSE = {
    2: 0.363380,
    4: 0.117482,
    8: 0.0345478,
    16: 0.00950101,
    32: 0.00250467,
    64: 0.00064424,
}


@pytest.mark.parametrize("n", sorted(LLOYD_MAX_MSE))
def test_gaussian_table_matches_published_optimum(n: int) -> None:
    levels, mse = gaussian_lloyd_max(n)
    assert mse == pytest.approx(LLOYD_MAX_MSE[n], rel=2e-5)
    assert torch.allclose(levels, -levels.flip(0), atol=1e-12)  # symmetric
    # fixed point: every level is the centroid of its cell under N(0, 1)
    edges = torch.cat([torch.tensor([-math.inf]), midpoints(levels), torch.tensor([math.inf])])
    mass = torch.special.ndtr(edges[1:]) - torch.special.ndtr(edges[:-1])
    pdf = torch.exp(-0.5 * edges**2) / math.sqrt(2 * math.pi)
    assert torch.allclose((pdf[:-1] - pdf[1:]) / mass, levels, atol=1e-9)


def test_gaussian_table_rejects_bad_n() -> None:
    with pytest.raises(ValueError, match="n must be"):
        gaussian_lloyd_max(0)


def _brute(values: torch.Tensor, weights: torch.Tensor, levels: torch.Tensor, thr: torch.Tensor):
    # searchsorted(side="left") puts x == t in the upper bin, like bucketize(right=True)
    idx = torch.bucketize(values, thr, right=True)
    err = values - levels[idx]
    return float((weights * err**2).sum() / weights.sum()), float(
        (weights * err.abs()).sum() / weights.sum()
    )


def test_sorted_sample_errors_match_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    v = torch.randn(5000, generator=g, dtype=torch.float64) * 3 + 1
    w = torch.rand(5000, generator=g, dtype=torch.float64) + 0.1
    s = SortedSample(v, w)
    levels = torch.sort(torch.randn(9, generator=g, dtype=torch.float64) * 3).values
    thr = midpoints(levels)
    mse, mae = _brute(v, w, levels, thr)
    assert s.mse(levels, thr) == pytest.approx(mse, rel=1e-9)
    assert s.mae(levels, thr) == pytest.approx(mae, rel=1e-9)
    # thresholds need not be midpoints (companding codebooks)
    thr2 = torch.sort(torch.randn(8, generator=g, dtype=torch.float64)).values
    mse2, mae2 = _brute(v, w, levels, thr2)
    assert s.mse(levels, thr2) == pytest.approx(mse2, rel=1e-9)
    assert s.mae(levels, thr2) == pytest.approx(mae2, rel=1e-9)


def test_large_tensor_sample_keeps_outliers_and_total_weight() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200_000, generator=g)
    x[123] = 500.0
    x[77] = -300.0
    s = SortedSample.from_tensor(x, max_size=10_000)
    assert s.total == pytest.approx(x.numel(), rel=1e-9)
    assert float(s.values.max()) == 500.0 and float(s.values.min()) == -300.0
    # the weighted second moment estimates the data's (outliers counted once)
    exact = float((x.double() ** 2).mean())
    est = float((s.c2[-1] + 2 * s.center * s.c1[-1] + s.center**2 * s.c0[-1]) / s.total)
    assert est == pytest.approx(exact, rel=0.05)


def _kmeans_optimum(values: list[float], n: int) -> float:
    """Exact 1-D k-means cost by trying every partition into contiguous runs (tiny inputs)."""
    v = sorted(values)
    best = math.inf
    for cuts in itertools.combinations(range(1, len(v)), n - 1):
        parts = [v[a:b] for a, b in zip((0, *cuts), (*cuts, len(v)))]
        cost = sum(sum((x - sum(p) / len(p)) ** 2 for x in p) for p in parts)
        best = min(best, cost)
    return best / len(v)


def test_lloyd_reaches_exact_kmeans_on_small_data() -> None:
    values = [-3.0, -2.5, -0.4, 0.0, 0.1, 0.3, 2.0, 2.2, 9.0, 9.5]
    s = SortedSample(torch.tensor(values, dtype=torch.float64))
    levels, mse = lloyd_max(s, torch.tensor([-3.0, 0.0, 2.0, 9.0]))
    assert mse == pytest.approx(_kmeans_optimum(values, 4), rel=1e-12)
    # and the result is a fixed point: levels are the centroids of their cells
    cnt, s1, _ = s.bin_sums(midpoints(levels))
    assert torch.allclose(s1 / cnt + s.center, levels, atol=1e-12)


def test_lloyd_pins_fixed_value() -> None:
    s = SortedSample(torch.tensor([-1.0, -0.9, 0.2, 0.3, 1.0, 1.1]))
    levels, _ = lloyd_max(s, torch.tensor([-1.0, 0.1, 1.0]), fixed=0.0)
    assert 0.0 in levels.tolist()


@pytest.mark.parametrize("n", [2, 16, 256])
def test_encoder_matches_float64_search(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    _, thr = dist_codebook("gaussian", n, 1.2)
    x = torch.randn(100_000, generator=g) * 1.5
    codes = Encoder(thr).encode(x)
    ref = torch.bucketize(x.double(), thr, right=True)
    diff = codes.long() != ref
    assert codes.dtype == torch.uint8
    # disagreements only within float32 rounding of a threshold
    bad = x.double()[diff]
    assert bool(((bad[:, None] - thr[None, :]).abs().min(1).values < 1e-5).all())
    assert int(diff.sum()) <= 10


def test_encoder_falls_back_for_uneven_thresholds() -> None:
    thr = torch.tensor([-1e9, 0.0, 1e-9, 1e9], dtype=torch.float64)
    enc = Encoder(thr)
    assert not enc.grid
    x = torch.tensor([-2e9, -1.0, 5e-10, 1.0, 2e9], dtype=torch.float64)
    assert enc.encode(x).tolist() == [0, 1, 2, 3, 4]


def test_encoder_single_level_and_sorted_check() -> None:
    assert Encoder(torch.zeros(0)).encode(torch.randn(7)).tolist() == [0] * 7
    with pytest.raises(ValueError, match="sorted"):
        Encoder(torch.tensor([1.0, 0.0]))


def _two_lookup_codes(enc: Encoder, u: torch.Tensor) -> torch.Tensor:
    """The encoder's definition: code at the cell start, plus one past the cell's threshold."""
    u = u.clamp(0.0, float(enc.cells - 1))
    cell = u.to(torch.int32)
    return enc.code_lut[cell].long() + (u >= enc.thr_lut[cell]).long()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("dist", "n"),
    [("gaussian", 2), ("gaussian", 16), ("gaussian_cdf", 7), ("logistic", 256), ("uniform", 5),
     ("cauchy_cdf", 64)],
)  # fmt: skip
def test_sum_table_equals_two_lookups(dist: str, n: int, dtype: torch.dtype) -> None:
    _, thr = dist_codebook(dist, n, 1.3)
    enc = Encoder(thr)
    table = enc.sum_table(dtype)
    assert table is not None and table.dtype == dtype
    g = torch.Generator().manual_seed(n)
    cells = torch.arange(enc.cells, dtype=dtype)
    t = enc.thr_lut.to(dtype)
    t = t[torch.isfinite(t)]
    inf = torch.tensor(float("inf"), dtype=dtype)
    u = torch.cat(
        [
            torch.rand(200_000, generator=g, dtype=dtype) * (enc.cells + 4) - 2,
            cells, torch.nextafter(cells, -inf), torch.nextafter(cells, inf),
            t, torch.nextafter(t, -inf), torch.nextafter(t, inf),
        ]
    )  # fmt: skip
    u = u.clamp(0.0, float(enc.cells - 1))
    fast = (table[u.to(torch.int32)] + u).to(torch.int64)  # one rounding, then truncation
    assert torch.equal(fast, _two_lookup_codes(enc, u))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_data_thresholds_count_equals_encode(n: int, dtype: torch.dtype) -> None:
    _, thr = dist_codebook("gaussian", n, 0.9)
    enc = Encoder(thr)
    loc, scale = 0.37, 1.9
    a, b = enc.affine(loc, scale)
    a, b = float(torch.tensor(a, dtype=dtype)), float(torch.tensor(b, dtype=dtype))
    xt = enc.data_thresholds(a, b, dtype)
    assert xt is not None and xt.shape == (n - 1,)
    g = torch.Generator().manual_seed(n)
    edges = torch.from_numpy(xt)
    inf = torch.tensor(float("inf"), dtype=dtype)
    x = torch.cat(
        [
            torch.randn(200_000, generator=g, dtype=dtype) * 4 + loc,
            edges, torch.nextafter(edges, -inf), torch.nextafter(edges, inf),
            torch.tensor([-1e30, 1e30, 0.0, -0.0], dtype=dtype),
        ]
    )  # fmt: skip
    counted = (x[:, None] >= edges[None, :]).sum(1)
    assert torch.equal(counted, enc.encode(x, a, b, normalized=True).long())
    # and they are thresholds of the real codebook, in data units
    assert torch.allclose(edges, loc + scale * thr.to(dtype), atol=1e-5 * scale)
