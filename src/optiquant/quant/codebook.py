"""Scalar codebooks: optimal (Lloyd-Max) levels, and fast encoding against thresholds.

A scalar codebook is a sorted list of reconstruction ``levels`` and the ``n - 1``
sorted ``thresholds`` between them: a value ``x`` gets the code
``#{j : thresholds[j] <= x}`` and decodes to ``levels[code]``.

* :class:`SortedSample` holds a (weighted) sorted sample of the data with prefix
  sums, so the squared or absolute error of any codebook, and the centroids of
  any partition, cost ``O(n log m)`` instead of a pass over the data.
* :func:`lloyd_max` runs Lloyd-Max iterations (1-D k-means) on such a sample.
* :func:`gaussian_lloyd_max` gives the MSE-optimal codebook for ``N(0, 1)``.
* :class:`Encoder` turns thresholds into a branch-free encoder: one lookup and
  one addition per value, or, for a few thresholds, a count of the exact
  data-unit thresholds below each value.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "Encoder",
    "SortedSample",
    "code_dtype",
    "gaussian_lloyd_max",
    "lloyd_max",
    "midpoints",
]

#: Largest fine-grid lookup table the :class:`Encoder` builds before it falls
#: back to binary search.
MAX_GRID = 1 << 20


def code_dtype(n: int) -> torch.dtype:
    """Smallest integer dtype used to hold codes ``0 .. n - 1``.

    >>> code_dtype(16), code_dtype(256), code_dtype(257)
    (torch.uint8, torch.uint8, torch.int32)
    """
    return torch.uint8 if n <= 256 else torch.int32


def _np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


def midpoints(levels: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour thresholds of sorted ``levels`` (the midpoints between them).

    >>> midpoints(torch.tensor([-1.0, 0.0, 3.0]))
    tensor([-0.5000,  1.5000])
    """
    return 0.5 * (levels[1:] + levels[:-1])


def _outside(flat: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The values of ``flat`` below ``lo`` or above ``hi``, in order."""
    if flat.device.type != "cpu" or flat.dtype not in (torch.float32, torch.float64):
        return flat[(flat < lo) | (flat > hi)]
    xn = flat.contiguous().numpy()
    lo_v, hi_v = xn.dtype.type(float(lo)), xn.dtype.type(float(hi))
    step = 1 << 18
    below = np.empty(step, dtype=np.bool_)
    above = np.empty(step, dtype=np.bool_)
    parts = []
    for start in range(0, xn.size, step):
        xc = xn[start : start + step]
        m = xc.size
        np.less(xc, lo_v, out=below[:m])
        np.greater(xc, hi_v, out=above[:m])
        np.logical_or(below[:m], above[:m], out=below[:m])
        if below[:m].any():
            parts.append(xc[below[:m]])
    if not parts:
        return flat[:0].clone()
    return torch.from_numpy(np.concatenate(parts))


class SortedSample:
    """A weighted, sorted sample of a tensor with float64 prefix sums.

    ``values`` are sorted; ``weights`` say how many data values each one stands
    for (a uniform random sample of ``m`` out of ``N`` values has weight
    ``N / m``). All statistics are weighted sums divided by the total weight.

    >>> s = SortedSample(torch.tensor([3.0, -1.0, 1.0, 5.0]))
    >>> s.mse(torch.tensor([0.0, 4.0]), torch.tensor([2.0]))
    1.0
    """

    def __init__(self, values: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        v = values.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
        # numpy's sort (vectorised on x86) gives the same sorted values and,
        # since equal values always come with equal weights here, the same weights
        if weights is None:
            v = torch.from_numpy(np.sort(v.numpy()))
            w = torch.ones_like(v)
        else:
            w = weights.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
            order = torch.from_numpy(np.argsort(v.numpy()))
            v, w = v[order], w[order]
        self.values = v
        zero = torch.zeros(1, dtype=torch.float64)
        # Prefix sums are centred on the weighted mean, which keeps the
        # "sum of squares minus square of sum" formulas accurate.
        total = float(w.sum()) if v.numel() else 0.0
        self.center = float((w * v).sum() / total) if total > 0 else 0.0
        c = v - self.center
        self.c0 = torch.cat([zero, torch.cumsum(w, 0)])
        self.c1 = torch.cat([zero, torch.cumsum(w * c, 0)])
        self.c2 = torch.cat([zero, torch.cumsum(w * c * c, 0)])
        self.total = total

    @classmethod
    def from_tensor(
        cls, x: torch.Tensor, max_size: int = 1 << 18, *, seed: int = 0
    ) -> SortedSample:
        """Sort ``x`` (all of it when it has at most ``max_size`` values).

        Larger tensors are represented by a uniform random sample of
        ``max_size`` values plus every value outside the sample's range (with
        weight 1, so outliers are never missed); the sampled values are
        weighted to stand for the rest.
        """
        flat = x.detach().reshape(-1)
        numel = flat.numel()
        if numel <= max_size:
            return cls(flat)
        gen = torch.Generator(device=flat.device)
        gen.manual_seed(seed)
        idx = torch.randint(0, numel, (max_size,), generator=gen, device=flat.device)
        mid = flat[idx]
        lo, hi = torch.aminmax(mid)
        outside = _outside(flat, lo, hi)
        w_mid = (numel - outside.numel()) / max_size
        vals = torch.cat([mid, outside])
        weights = torch.cat(
            [
                torch.full((max_size,), w_mid, dtype=torch.float64),
                torch.ones(outside.numel(), dtype=torch.float64),
            ]
        )
        return cls(vals, weights)

    def affine(self, loc: float, scale: float, weight: float = 1.0) -> SortedSample:
        """The sample of ``(x - loc) / scale`` (``scale > 0``), weights times ``weight``."""
        out = SortedSample.__new__(SortedSample)
        out.values = (self.values - loc) / scale
        out.center = (self.center - loc) / scale
        out.c0 = self.c0 * weight
        out.c1 = self.c1 * (weight / scale)
        out.c2 = self.c2 * (weight / (scale * scale))
        out.total = self.total * weight
        return out

    def __len__(self) -> int:
        return int(self.values.numel())

    def _np(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.values.numpy(), self.c0.numpy(), self.c1.numpy(), self.c2.numpy()

    def _edges_np(self, thresholds: np.ndarray) -> np.ndarray:
        v = self.values.numpy()
        idx = np.searchsorted(v, thresholds, side="left")
        return np.concatenate([[0], idx, [v.size]])

    def bin_sums(self, thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weight, centred sum and centred sum of squares of the values in each bin."""
        t = thresholds.detach().to(device="cpu", dtype=torch.float64).numpy()
        _, c0, c1, c2 = self._np()
        e = self._edges_np(t)
        lo, hi = e[:-1], e[1:]
        return (
            torch.from_numpy(c0[hi] - c0[lo]),
            torch.from_numpy(c1[hi] - c1[lo]),
            torch.from_numpy(c2[hi] - c2[lo]),
        )

    def mse_np(self, levels: np.ndarray, thresholds: np.ndarray) -> float:
        """:meth:`mse` on float64 numpy arrays."""
        if self.total <= 0:
            return 0.0
        _, c0, c1, c2 = self._np()
        e = self._edges_np(thresholds)
        lo, hi = e[:-1], e[1:]
        c = levels - self.center
        err = (c2[hi] - c2[lo]) - 2.0 * c * (c1[hi] - c1[lo]) + c * c * (c0[hi] - c0[lo])
        return max(float(err.sum()) / self.total, 0.0)

    def mae_np(self, levels: np.ndarray, thresholds: np.ndarray) -> float:
        """:meth:`mae` on float64 numpy arrays."""
        if self.total <= 0:
            return 0.0
        v, c0, c1, _ = self._np()
        e = self._edges_np(thresholds)
        lo, hi = e[:-1], e[1:]
        # Split every bin at its level: values below pay (c - x), above (x - c).
        mid = np.clip(np.searchsorted(v, levels, side="left"), lo, hi)
        c = levels - self.center
        w_lo, s_lo = c0[mid] - c0[lo], c1[mid] - c1[lo]
        w_hi, s_hi = c0[hi] - c0[mid], c1[hi] - c1[mid]
        err = (c * w_lo - s_lo) + (s_hi - c * w_hi)
        return max(float(err.sum()) / self.total, 0.0)

    def mse(self, levels: torch.Tensor, thresholds: torch.Tensor) -> float:
        """Weighted mean squared error of the codebook on the sample."""
        return self.mse_np(_np64(levels), _np64(thresholds))

    def mae(self, levels: torch.Tensor, thresholds: torch.Tensor) -> float:
        """Weighted mean absolute error of the codebook on the sample."""
        return self.mae_np(_np64(levels), _np64(thresholds))

    def error(self, levels: torch.Tensor, thresholds: torch.Tensor, objective: str) -> float:
        """``mse`` or ``mae`` of the codebook, by name."""
        lv, th = _np64(levels), _np64(thresholds)
        return self.mse_np(lv, th) if objective == "mse" else self.mae_np(lv, th)

    def quantiles(self, p: torch.Tensor) -> torch.Tensor:
        """Weighted quantiles of the sample at probabilities ``p``."""
        p = p.to(dtype=torch.float64)
        cum = self.c0[1:] / max(self.total, 1e-300)
        idx = torch.from_numpy(np.searchsorted(cum.numpy(), p.numpy())).clamp(max=len(self) - 1)
        return self.values[idx]


def lloyd_max(
    sample: SortedSample,
    init: torch.Tensor,
    *,
    max_iter: int = 300,
    tol: float = 1e-10,
    fixed: float | None = None,
) -> tuple[torch.Tensor, float]:
    """Lloyd-Max iterations (1-D k-means) on ``sample``, started from ``init`` levels.

    Each iteration puts the thresholds at the midpoints of the levels and moves
    every level to the centroid of its bin (empty bins keep their level). With
    ``fixed``, the level nearest to that value is pinned to it, so the value is
    reconstructed exactly. Returns the sorted float64 levels and their MSE on
    the sample. Each iteration costs ``O(n log m)`` for ``n`` levels.

    >>> x = torch.tensor([-2.0, -1.0, 1.0, 2.0, 10.0])
    >>> levels, mse = lloyd_max(SortedSample(x), torch.tensor([-1.0, 1.0]))
    >>> levels.tolist(), mse
    ([0.0, 10.0], 2.0)
    """
    levels = np.sort(_np64(init)).copy()
    pin = -1
    if fixed is not None:
        pin = int(np.argmin(np.abs(levels - fixed)))
        levels[pin] = fixed
    span = float(levels[-1] - levels[0]) if levels.size > 1 else 1.0
    span = span if span > 0 else 1.0
    _, c0, c1, _ = sample._np()
    for _ in range(max_iter):
        e = sample._edges_np(0.5 * (levels[1:] + levels[:-1]))
        cnt = c0[e[1:]] - c0[e[:-1]]
        s1 = c1[e[1:]] - c1[e[:-1]]
        new = np.where(cnt > 0, s1 / np.where(cnt > 0, cnt, 1.0) + sample.center, levels)
        if pin >= 0:
            new[pin] = fixed
        new.sort()
        moved = float(np.abs(new - levels).max()) if new.size else 0.0
        levels = new
        if moved <= tol * span:
            break
    out = torch.from_numpy(levels)
    return out, sample.mse_np(levels, 0.5 * (levels[1:] + levels[:-1]))


def _std_normal_pdf(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


@functools.lru_cache(maxsize=64)
def _gaussian_table(n: int) -> tuple[tuple[float, ...], float]:
    if n == 1:
        return (0.0,), 1.0
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    # High-rate MSE-optimal start: point density proportional to pdf^(1/3).
    levels = math.sqrt(3.0) * torch.special.ndtri(p)
    inf = torch.tensor([math.inf], dtype=torch.float64)
    step = 1.0
    for _ in range(20000):
        edges = torch.cat([-inf, midpoints(levels), inf])
        mass = torch.special.ndtr(edges[1:]) - torch.special.ndtr(edges[:-1])
        pdf = _std_normal_pdf(edges)
        cent = (pdf[:-1] - pdf[1:]) / mass
        cent = 0.5 * (cent - cent.flip(0))  # keep exact symmetry
        moved = float((cent - levels).abs().max())
        if moved < 1e-9:
            levels = cent
            break
        # over-relaxed Lloyd step (plain Lloyd crawls in the tails); falls back if unsorted
        new = levels + step * 1.6 * (cent - levels)
        if bool((new[1:] <= new[:-1]).any()):
            step, new = 0.5 * step, cent
        levels = new
    edges = torch.cat([-inf, midpoints(levels), inf])
    mass = torch.special.ndtr(edges[1:]) - torch.special.ndtr(edges[:-1])
    pdf = _std_normal_pdf(edges)
    fin = torch.where(torch.isfinite(edges), edges, torch.zeros_like(edges))
    xpdf = fin * pdf
    m1 = pdf[:-1] - pdf[1:]  # integral of x * phi over each cell
    m2 = mass + (xpdf[:-1] - xpdf[1:])  # integral of x^2 * phi over each cell
    mse = float((m2 - 2.0 * levels * m1 + levels * levels * mass).sum())
    return tuple(levels.tolist()), mse


def gaussian_lloyd_max(n: int) -> tuple[torch.Tensor, float]:
    """The MSE-optimal ``n``-level quantizer of ``N(0, 1)`` and its exact MSE.

    Computed once per ``n`` by Lloyd-Max iterations on the exact density
    (closed-form centroids), in float64.

    >>> levels, mse = gaussian_lloyd_max(4)
    >>> [round(v, 4) for v in levels.tolist()], round(mse, 5)
    ([-1.5104, -0.4528, 0.4528, 1.5104], 0.11748)
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if n > 4096:
        raise ValueError(f"n must be at most 4096 for the Gaussian table, got {n}")
    levels, mse = _gaussian_table(n)
    return torch.tensor(levels, dtype=torch.float64), mse


class Encoder:
    """Encode values against sorted thresholds with a fine-grid lookup table.

    The threshold range is cut into ``M`` cells narrower than the smallest gap
    between thresholds, so each cell holds at most one threshold. A value's
    code is the code at its cell's start plus one if it lies past the cell's
    threshold, which one lookup and one addition compute exactly (see
    :meth:`sum_table`; otherwise two lookups and a compare). Values are mapped to
    cells by ``u = x * a + b`` (``a``, ``b`` per tensor or per group), which
    also applies a normalisation for free. When the grid would be too large
    (extremely uneven thresholds) the encoder falls back to binary search.

    >>> enc = Encoder(torch.tensor([-1.0, 0.0, 1.0]))
    >>> enc.encode(torch.tensor([-5.0, -0.5, 0.0, 0.7, 3.0])).tolist()
    [0, 1, 2, 2, 3]
    """

    def __init__(self, thresholds: torch.Tensor, *, device: torch.device | None = None) -> None:
        t = thresholds.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        if t.numel() > 1 and bool((t[1:] < t[:-1]).any()):
            raise ValueError("thresholds must be sorted")
        self.n = int(t.numel()) + 1
        self.dtype = code_dtype(self.n)
        self.device = device if device is not None else torch.device("cpu")
        self.thresholds = t
        self.grid = True
        self._sum_tables: dict[torch.dtype, torch.Tensor | None] = {}
        if t.numel() == 0:
            self.lo, self.h, self.cells = 0.0, 1.0, 1
            self.code_lut = torch.zeros(1, dtype=self.dtype, device=self.device)
            self.thr_lut = torch.full((1,), math.inf, dtype=torch.float32, device=self.device)
            return
        lo, hi = float(t[0]), float(t[-1])
        gaps = t[1:] - t[:-1]
        span = hi - lo
        min_gap = float(gaps.min()) if gaps.numel() else math.inf
        if not math.isfinite(min_gap) or span == 0.0:
            h = max(abs(lo), 1.0) if span == 0.0 and gaps.numel() == 0 else 0.0
        else:
            h = 0.999 * min_gap
        if gaps.numel() and (min_gap <= 0.0 or span / max(min_gap, 1e-300) > MAX_GRID - 4):
            self.grid = False
            self.lo, self.h, self.cells = 0.0, 1.0, 0
            self._t_dev = t.to(self.device)
            return
        if h == 0.0:
            h = 1.0
        cells = math.ceil(span / h) + 2
        start = lo - 0.5 * h
        self.lo, self.h, self.cells = start, h, cells
        edges = start + torch.arange(cells, dtype=torch.float64) * h
        code_at = torch.searchsorted(t, edges, right=True)
        nxt = torch.cat([t, torch.tensor([math.inf], dtype=torch.float64)])[code_at]
        inside = nxt < edges + h
        thr_u = torch.where(inside, (nxt - start) / h, torch.full_like(nxt, math.inf))
        self.code_lut = code_at.to(self.dtype).to(self.device)
        self.thr_lut = thr_u.to(torch.float32).to(self.device)

    def sum_table(self, dtype: torch.dtype) -> torch.Tensor | None:
        """One-lookup form of the grid encoder for grid units ``u`` of ``dtype``, or None.

        A table ``S`` (on the encoder's device, of ``dtype``) such that, for every
        ``u`` of that dtype clamped to ``[0, cells - 1]`` and its cell ``c =
        trunc(u)``, ``trunc(S[c] + u)`` (one rounding in ``dtype``) equals
        :meth:`encode`'s ``code_lut[c] + (u >= thr_lut[c])``. Within a cell
        the exact sum is ``code + 1 + (u - threshold)``, and both sides are
        monotone in ``u``, so checking each cell's ends and both sides of its
        threshold proves the equality; an entry that fails is moved by a few
        ulps until it passes. None when that does not succeed (or without a grid).
        """
        if dtype not in (torch.float32, torch.float64) or not self.grid:
            return None
        cached = self._sum_tables.get(dtype)
        if cached is not None or dtype in self._sum_tables:
            return cached
        npd = np.float32 if dtype == torch.float32 else np.float64
        code = self.code_lut.cpu().numpy().astype(np.float64)
        thr = self.thr_lut.cpu().numpy().astype(npd)
        cell = np.arange(self.cells, dtype=np.float64)
        lo = cell.astype(npd)
        hi = np.nextafter((cell + 1.0).astype(npd), npd(0.0))
        hi[-1] = lo[-1]  # u is clamped to cells - 1
        inside = (thr > lo) & (thr <= hi)
        whole = thr <= lo  # the whole cell is at or past its threshold
        t_in = np.where(inside, thr, lo)
        table = np.where(
            inside,
            code + 1.0 - t_in.astype(np.float64),
            np.where(whole, code + 1.0 - cell, code - cell),
        ).astype(npd)
        points = [lo, hi, t_in, np.where(inside, np.nextafter(t_in, npd(-np.inf)), lo)]
        wanted = [code + (p >= thr) for p in points]

        def passes(tab: np.ndarray) -> np.ndarray:
            ok = np.ones(self.cells, dtype=bool)
            with np.errstate(invalid="ignore", over="ignore"):
                for p, w in zip(points, wanted, strict=True):
                    ok &= np.trunc((tab + p).astype(npd)) == w
            return ok

        ok = passes(table)
        for steps in range(1, 9):
            if ok.all():
                break
            for direction in (np.inf, -np.inf):
                cand = table
                for _ in range(steps):
                    cand = np.nextafter(cand, npd(direction))
                cand_ok = passes(cand)
                fix = ~ok & cand_ok
                table = np.where(fix, cand, table)
                ok |= fix
        result = torch.from_numpy(table).to(self.device) if ok.all() else None
        self._sum_tables[dtype] = result
        return result

    def data_thresholds(self, a: float, b: float, dtype: torch.dtype) -> np.ndarray | None:
        """Thresholds on ``x`` itself for :meth:`encode` with ``normalized=True``.

        For values ``x`` of ``dtype`` (float32 or float64) and ``a > 0``,
        ``encode(x, a, b, normalized=True)`` equals the number of entries of
        the returned array (of that dtype) that are ``<= x``: entry ``k - 1``
        is the smallest ``x`` whose code is at least ``k``, found by bisection
        over the ordered floats (``+inf`` when no finite ``x`` reaches code
        ``k``). This holds because the code is a non-decreasing function of
        ``x``; None when that cannot be shown (no grid, or ``a <= 0``).
        """
        if dtype not in (torch.float32, torch.float64) or not self.grid or not a > 0.0:
            return None
        if dtype == torch.float32:
            npd, npi, npu = np.float32, np.int32, np.uint32
        else:
            npd, npi, npu = np.float64, np.int64, np.uint64
        code = self.code_lut.cpu().numpy().astype(np.int64)
        thr = self.thr_lut.cpu().numpy().astype(npd)
        top = self.cells - 1
        cell = np.arange(self.cells)
        # the code is non-decreasing in the grid unit u: check across cell ends
        end = code + (thr <= np.nextafter((cell + 1).astype(npd), npd(0.0)))
        start = code + (thr <= cell.astype(npd))
        if bool((end[:-1] > start[1:]).any()):
            return None
        a_w, b_w = npd(a), npd(b)
        mask = npi(np.iinfo(npi).max)
        shift = npi(8 * np.dtype(npi).itemsize - 1)

        def to_float(key: np.ndarray) -> np.ndarray:  # ordered integer key <-> float bits
            return (key ^ ((key >> shift) & mask)).view(npd)

        def code_of(x: np.ndarray) -> np.ndarray:
            with np.errstate(over="ignore", invalid="ignore"):
                u = np.add(np.multiply(x, a_w), b_w)  # two roundings, as encode
            u = np.clip(u, npd(0.0), npd(top))
            c = u.astype(np.int64)
            return code[c] + (u >= thr[c])

        biggest = np.finfo(npd).max
        m = self.n - 1
        lo_key = np.full(m, -biggest, dtype=npd).view(npi) ^ mask
        hi_key = np.full(m, biggest, dtype=npd).view(npi).copy()
        want = np.arange(1, self.n)
        below = code_of(to_float(lo_key)) >= want  # reached at the lowest float already
        above = code_of(to_float(hi_key)) < want  # never reached by a finite value
        # for the others: code(float(lo)) < want <= code(float(hi))
        for _ in range(8 * np.dtype(npi).itemsize + 1):
            gap = hi_key.view(npu) - lo_key.view(npu)
            if not bool((gap > 1).any()):
                break
            mid = (lo_key.view(npu) + gap // npu(2)).view(npi)
            ok = code_of(to_float(mid)) >= want
            hi_key = np.where(ok, mid, hi_key)
            lo_key = np.where(ok, lo_key, mid)
        out = to_float(hi_key).copy()
        out[below] = -np.inf
        out[above] = np.inf
        return out

    def affine(self, loc: float, scale: float) -> tuple[float, float]:
        """``(a, b)`` so ``x * a + b`` is in grid units for thresholds on ``(x - loc) / scale``."""
        a = 1.0 / (scale * self.h)
        return a, -(loc / scale + self.lo) / self.h

    def encode(
        self,
        x: torch.Tensor,
        a: float | torch.Tensor = 1.0,
        b: float | torch.Tensor = 0.0,
        *,
        normalized: bool = False,
    ) -> torch.Tensor:
        """Codes of ``x`` (any shape, returned flat).

        With ``normalized=False`` (the default) the thresholds apply to ``x``
        itself and ``a``/``b`` are ignored. Otherwise ``x * a + b`` must already
        be grid units (see :meth:`affine`); ``a`` and ``b`` may be tensors that
        broadcast against ``x``.
        """
        if not normalized:
            a, b = 1.0 / self.h, -self.lo / self.h
        if not self.grid:
            t = self._t_dev.to(x.device)
            z = x.to(torch.float64) * a + b  # grid units are data units here
            return torch.bucketize(z, t, right=True).to(self.dtype).reshape(-1)
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            u = torch.addcmul(
                torch.as_tensor(b, dtype=x.dtype, device=x.device),
                x,
                torch.as_tensor(a, dtype=x.dtype, device=x.device),
            )
        else:
            u = torch.mul(x, a)
            u.add_(b)
        u = u.reshape(-1)
        if u.dtype not in (torch.float32, torch.float64):
            u = u.float()
        u.clamp_(0.0, float(self.cells - 1))
        cell = u.to(torch.int32)
        table = self.sum_table(u.dtype)
        if table is not None:
            s = torch.index_select(table.to(u.device), 0, cell)
            return s.add_(u).to(self.dtype)
        code = torch.index_select(self.code_lut, 0, cell)
        thr = torch.index_select(self.thr_lut, 0, cell)
        ge = u >= thr
        code += ge.view(torch.uint8) if code.dtype == torch.uint8 else ge
        return code


def as_levels(values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Sorted float64 CPU tensor of ``values`` (helper for user-given codebooks)."""
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    return torch.sort(t).values
