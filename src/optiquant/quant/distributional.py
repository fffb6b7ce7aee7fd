"""Distributional quantization of tensors (distquant's ``quantize``/``dequantize``), MSE-driven.

``quantize(data, k=4)`` standardises the data with a fitted location and scale,
encodes every value against the thresholds of a codebook for the assumed
distribution, and returns the codes with an ``info`` dict; ``dequantize(q,
**info)`` maps the codes back. The distributions and their meanings follow
distquant 0.1.0:

* ``gaussian``, ``logistic``, ``gumbel``, ``exponential``: companding with the
  CDF of the square root of the density (the high-rate mean-absolute-error
  optimal point density);
* ``gaussian_cdf``, ``logistic_cdf``, ``gumbel_cdf``, ``exponential_cdf``,
  ``cauchy_cdf``: the distribution's own CDF (equal-probability bins);
* reconstruction at the bin's median quantile, scaled by the range factor
  ``beta``.

Beyond distquant: ``dist='lloyd'`` fits the MSE-optimal codebook to the data
(Lloyd-Max iterations started from the Gaussian optimum and from the data's
quantiles); ``beta=None`` and ``dist=None`` search by **mean squared error**
(``objective='mae'`` reproduces distquant's criterion); ``group_size`` fits a
location and scale per group of consecutive values; encoding never produces an
out-of-range code (no CDF saturation), inputs are never modified, and the
input's dtype and device are kept.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from optiquant.quant import kernels, memory
from optiquant.quant.codebook import (
    Encoder,
    SortedSample,
    code_dtype,
    gaussian_lloyd_max,
    lloyd_max,
    midpoints,
)
from optiquant.quant.wordpack import (
    codes_per_word,
    pack_bytes_into,
    pack_float_into,
    pack_words,
    unpack_words,
)

__all__ = ["DISTS", "METHODS", "dequantize", "dist_codebook", "quantize"]

#: The distributions of distquant, in its order.
DISTS = (
    "gaussian",
    "gaussian_cdf",
    "logistic",
    "logistic_cdf",
    "cauchy_cdf",
    "gumbel",
    "gumbel_cdf",
    "exponential",
    "exponential_cdf",
)
#: Every accepted ``dist``: the distributions, the data-fitted ``lloyd`` codebook,
#: and ``uniform`` (evenly spaced levels over the largest magnitude, times ``beta``).
METHODS = (*DISTS, "lloyd", "uniform")
_SCALINGS = ("std", "absmax")
_EULER_GAMMA = 0.5772156649015329
_MAX_N = 1 << 16
_CHUNK = 1 << 18
# The CPU path keeps its five chunk buffers (13 to 25 bytes per value) in L2.
_CHUNK_CPU = 3 << 15
_CHUNK_COUNT = 1 << 18  # the counting path needs 6 bytes per value
# Up to this many thresholds (k <= 3), counting the thresholds below each value
# (one compare and one byte add each) beats the table lookup.
_COUNT_MAX = 7
_COUNT_FAST = 3  # with the compiled kernels, counting is kept only up to this many
# The lookup path reads two cells at once (a table of 256 * cells pairs) up to this.
_PAIR_CELLS = 64
# Below torch's intra-op grain size (32768) operations run on the calling thread.
# With several threads, chunks that small avoid the thread synchronisation per
# operation, which costs 10x or more when the machine is busy.
_CHUNK_SERIAL = (1 << 15) - 1024
_LITTLE = sys.byteorder == "little"


# ----------------------------------------------------------------------------- codebooks
def _ginv(dist: str, p: torch.Tensor) -> torch.Tensor:
    """Inverse of the companding CDF used by ``dist`` (standardised units)."""
    if dist == "gaussian":
        return math.sqrt(2.0) * torch.special.ndtri(p)
    if dist == "gaussian_cdf":
        return torch.special.ndtri(p)
    if dist == "logistic":
        return 2.0 * torch.log(torch.tan(0.5 * math.pi * p))
    if dist == "logistic_cdf":
        return torch.log(p) - torch.log1p(-p)
    if dist == "gumbel":
        return -math.log(2.0) - 2.0 * torch.log(torch.special.erfinv(1.0 - p))
    if dist == "gumbel_cdf":
        return -torch.log(-torch.log(p))
    if dist == "exponential":
        return -2.0 * torch.log1p(-p)
    if dist == "exponential_cdf":
        return -torch.log1p(-p)
    if dist == "cauchy_cdf":
        return torch.tan(math.pi * (p - 0.5))
    raise ValueError(f"unknown dist {dist!r}")


def dist_codebook(dist: str, n: int, beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised ``(levels, thresholds)`` of ``dist`` with ``n`` points (float64).

    Thresholds are ``beta * Ginv(i / n)`` and levels ``beta * Ginv((i + 1/2) / n)``.

    >>> levels, thresholds = dist_codebook("gaussian_cdf", 2)
    >>> [round(v, 4) for v in levels.tolist()], thresholds.tolist()
    ([-0.6745, 0.6745], [0.0])
    """
    if dist == "uniform":
        lv = beta * torch.linspace(-1.0, 1.0, n, dtype=torch.float64) if n > 1 else torch.zeros(1)
        return lv.to(torch.float64), midpoints(lv.to(torch.float64))
    if dist not in DISTS:
        raise ValueError(f"dist must be one of {METHODS[:-2]} or 'uniform', got {dist!r}")
    i = torch.arange(n, dtype=torch.float64)
    levels = beta * _ginv(dist, (i + 0.5) / n)
    thresholds = beta * _ginv(dist, i[1:] / n)
    return levels, thresholds


def _snap(levels: torch.Tensor, thresholds: torch.Tensor, z0: float) -> torch.Tensor:
    """Levels with the one whose bin holds ``z0`` moved onto ``z0``."""
    j = int(torch.searchsorted(thresholds, torch.tensor([z0], dtype=torch.float64), right=True))
    out = levels.clone()
    out[j] = z0
    return out


# ------------------------------------------------------------------------------- checks
def _check_data(data: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be a torch.Tensor, got {type(data).__name__}")
    if not data.is_floating_point():
        raise TypeError(f"data must be a floating-point tensor, got dtype {data.dtype}")
    return data


def _check_n(k: Any, n: Any) -> int:
    if (k is None) == (n is None):
        raise ValueError("give exactly one of k (bits) or n (number of points)")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if not 1 <= k <= 16:
            raise ValueError(f"k must be in [1, 16] bits, got {k}")
        return 1 << k
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if not 1 <= n <= _MAX_N:
        raise ValueError(f"n must be in [1, {_MAX_N}], got {n}")
    return n


def _check_float(name: str, value: Any, *, positive: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or None, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0.0):
        kind = "a positive finite" if positive else "a finite"
        raise ValueError(f"{name} must be {kind} number, got {value}")
    return v


def _bits_for(n: int) -> int:
    return max(1, (n - 1).bit_length())


# ------------------------------------------------------------------------------- fitting
class _Stats:
    """Location/scale statistics of the data, per tensor or per group (tensors).

    Per tensor, ``sums`` may give the already computed ``(x.sum(), x @ x)``; the
    range (``lo``, ``hi``) is then only computed when a fit needs it.
    """

    def __init__(
        self,
        x: torch.Tensor,
        group_size: int | None,
        sums: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.numel = x.numel()
        self.group_size = group_size
        self._x = x
        self._range: tuple[torch.Tensor, torch.Tensor] | None = None
        if group_size is None:
            s, sq = sums if sums is not None else (x.sum(), torch.dot(x, x))
            s, sq = s.double(), sq.double()
            mean = s / self.numel
            var = (sq - self.numel * mean * mean) / max(self.numel - 1, 1)
            if float(var) < 1e-3 * float(sq / self.numel):
                var = torch.var(x.double())  # cancellation: recompute exactly
            self.mean = mean.reshape(1)
            self.std = var.clamp(min=0).sqrt().reshape(1)
            # Two different values in a strided sample settle it without a pass
            # over the data; otherwise compare the range.
            probe = x[:: max(1, self.numel // 1024)]
            if bool((probe != probe[0]).any()):
                self.constant = torch.zeros(1, dtype=torch.bool, device=x.device)
            else:
                self.constant = self.lo == self.hi
        else:
            full = (self.numel // group_size) * group_size
            parts = []
            if full:
                parts.append(x[:full].view(-1, group_size))
            tail = x[full:]
            means, stds, los, his = [], [], [], []
            for p in parts:
                var, mean = torch.var_mean(p.double(), dim=1)
                lo, hi = torch.aminmax(p, dim=1)
                means.append(mean)
                stds.append(var.clamp(min=0).sqrt())
                los.append(lo.double())
                his.append(hi.double())
            if tail.numel():
                t = tail.double()
                means.append(t.mean().reshape(1))
                stds.append(
                    (t.var() if t.numel() > 1 else torch.zeros((), dtype=t.dtype))
                    .reshape(1)
                    .clamp(min=0)
                    .sqrt()
                )
                los.append(t.min().reshape(1))
                his.append(t.max().reshape(1))
            self.mean = torch.cat(means)
            self.std = torch.cat(stds)
            self._range = (torch.cat(los), torch.cat(his))
            self.constant = self._range[0] == self._range[1]
        self._quart: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._samples: dict[int, SortedSample] = {}

    def sample(self, max_size: int) -> SortedSample:
        """``SortedSample.from_tensor(x, max_size)``, computed once per size."""
        if max_size not in self._samples:
            self._samples[max_size] = SortedSample.from_tensor(self._x, max_size)
        return self._samples[max_size]

    @property
    def lo(self) -> torch.Tensor:
        """Smallest value per tensor or group (float64)."""
        return self._minmax()[0]

    @property
    def hi(self) -> torch.Tensor:
        """Largest value per tensor or group (float64)."""
        return self._minmax()[1]

    def _minmax(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._range is None:
            lo, hi = torch.aminmax(self._x)
            self._range = (lo.double().reshape(1), hi.double().reshape(1))
        return self._range

    def quartiles(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q25, median, q75) per tensor or per group (on a sample when large)."""
        if self._quart is None:
            q = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64, device=self._x.device)
            if self.group_size is None:
                s = self.sample(1 << 18)
                v = s.quantiles(q.cpu()).to(self._x.device)
                self._quart = (v[0:1], v[1:2], v[2:3])
            else:
                gs = self.group_size
                full = (self.numel // gs) * gs
                rows = []
                if full:
                    rows.append(torch.quantile(self._x[:full].view(-1, gs).double(), q, dim=1))
                if self.numel > full:
                    rows.append(torch.quantile(self._x[full:].double(), q).reshape(3, 1))
                v = torch.cat(rows, dim=1)
                self._quart = (v[0], v[1], v[2])
        return self._quart

    def fit(self, dist: str, zero: float | None, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) per tensor/group for ``dist`` (float64; scale 0 if constant)."""
        mean, std = self.mean, self.std
        if dist in ("gaussian", "gaussian_cdf"):
            loc, scale = mean, std
        elif dist in ("logistic", "logistic_cdf"):
            loc, scale = mean, std * math.sqrt(3.0) / math.pi
        elif dist in ("gumbel", "gumbel_cdf"):
            scale = std * math.sqrt(6.0) / math.pi
            loc = mean - _EULER_GAMMA * scale
        elif dist in ("exponential", "exponential_cdf"):
            loc, scale = torch.full_like(mean, 0.0 if zero is None else zero), std
        elif dist == "cauchy_cdf":
            q1, med, q3 = self.quartiles()
            loc, scale = med, 0.5 * (q3 - q1)
            scale = torch.where(scale > 0, scale, std)
        elif scaling == "absmax" or dist == "uniform":
            c = torch.full_like(mean, 0.0 if zero is None else zero)
            loc, scale = c, torch.maximum((self.hi - c).abs(), (self.lo - c).abs())
        else:  # lloyd, "std" scaling
            loc, scale = mean, std
            if zero is not None:
                rms = torch.sqrt(std * std + (mean - zero) ** 2)
                loc, scale = torch.full_like(mean, zero), rms
        if zero is not None and dist not in ("exponential", "exponential_cdf"):
            loc = torch.full_like(loc, zero)
        # A constant tensor/group is reproduced exactly: all of it sits at loc.
        if bool(self.constant.any()):
            loc = torch.where(self.constant, self.lo, loc)
        scale = torch.where(self.constant | (scale <= 0), torch.zeros_like(scale), scale)
        return loc, scale


def _round_params(
    loc: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round loc/scale to the dtype they are stored in, so encode and decode agree."""
    loc_r, scale_r = loc.to(dtype).double(), scale.to(dtype).double()
    # a scale that rounds to zero (or overflows) would lose the data: keep more precision
    bad = (scale_r == 0) & (scale > 0) | ~torch.isfinite(scale_r) | ~torch.isfinite(loc_r)
    if bool(bad.any()):
        return loc.float().double(), scale.float().double()
    return loc_r, scale_r


# ------------------------------------------------------------------------------ sampling
def _z_sample(
    x: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    group_size: int | None,
    max_size: int,
    objective: str,
    base: SortedSample | None = None,
) -> SortedSample:
    """Sorted sample of the standardised data, weighted so its error is the data's error."""
    numel = x.numel()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    if group_size is None:
        s = base if base is not None else SortedSample.from_tensor(x, max_size)
        sc = float(scale[0])
        return s.affine(float(loc[0]), float(safe[0]), sc * sc if objective == "mse" else sc)
    if numel <= max_size:
        idx = torch.arange(numel, device=x.device)
    else:
        gen = torch.Generator(device=x.device)
        gen.manual_seed(0)
        idx = torch.randint(0, numel, (max_size,), generator=gen, device=x.device)
    g = idx // group_size
    vals = x[idx].double()
    z = (vals - loc[g]) / safe[g]
    sc_g = scale[g]
    w = sc_g * sc_g if objective == "mse" else sc_g
    return SortedSample(z, w * (numel / idx.numel()))


def _search_beta(
    sample: SortedSample,
    dist: str,
    n: int,
    snap: bool,
    objective: str,
) -> tuple[float, float]:
    """Range factor minimising the sample error: log grid, then golden section."""
    base_l, base_t = dist_codebook(dist, n, 1.0)

    def err(beta: float) -> float:
        lv, th = base_l * beta, base_t * beta
        if snap:
            lv = _snap(lv, th, 0.0)
        return sample.error(lv, th, objective)

    logs = torch.linspace(math.log(1e-2), math.log(1e2), 41).tolist()
    errs = [err(math.exp(v)) for v in logs]
    i = min(range(len(errs)), key=errs.__getitem__)
    a, b = logs[max(i - 1, 0)], logs[min(i + 1, len(logs) - 1)]
    best_b, best_e = math.exp(logs[i]), errs[i]
    e1_beta = err(1.0)
    if e1_beta < best_e:
        best_b, best_e = 1.0, e1_beta
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = err(math.exp(c)), err(math.exp(d))
    for _ in range(30):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = err(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = err(math.exp(d))
    for v, e in ((c, fc), (d, fd)):
        if e < best_e:
            best_b, best_e = math.exp(v), e
    return best_b, best_e


def _fit_lloyd(sample: SortedSample, n: int, snap: bool) -> tuple[torch.Tensor, float]:
    """MSE-optimal levels on the sample, best of two starts."""
    fixed = 0.0 if snap else None
    starts = []
    if n <= 64:
        g, _ = gaussian_lloyd_max(n)
        starts.append(g)
    else:
        starts.append(dist_codebook("gaussian", n, math.sqrt(1.5))[0])
    # Centroids of equal-mass bins of the data: follows heavy tails.
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    q = sample.quantiles(p)
    starts.append(q + 1e-12 * torch.arange(n, dtype=torch.float64))
    iters = 300 if n <= 256 else 30
    best: tuple[torch.Tensor, float] | None = None
    for s in starts:
        lv, e = lloyd_max(sample, s, max_iter=iters, fixed=fixed)
        if best is None or e < best[1]:
            best = (lv, e)
    assert best is not None
    return best


# ------------------------------------------------------------------------------- encode
def _chunk_len(per_word: int, group_size: int | None) -> int:
    base = per_word if group_size is None else math.lcm(per_word, group_size)
    target = _CHUNK if torch.get_num_threads() == 1 else _CHUNK_SERIAL
    return base * max(1, target // base)


def _workers(numel: int, step: int) -> int:
    """Python threads for the CPU chunk loops: torch's thread count, if there is work."""
    return max(1, min(torch.get_num_threads(), 8, numel // (4 * step)))


def _run_chunks(fn: Callable[[int, int, int], None], numel: int, step: int, workers: int) -> None:
    """``fn(worker, start, end)`` over the chunks, spread over ``workers`` threads.

    numpy and torch release the GIL inside their kernels, so the threads run
    in parallel; each worker owns its buffers and writes its own output range.
    """
    starts = range(0, numel, step)
    if workers == 1:
        for start in starts:
            fn(0, start, min(start + step, numel))
        return

    def work(w: int) -> None:
        for start in starts[w::workers]:
            fn(w, start, min(start + step, numel))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in [pool.submit(work, w) for w in range(workers)]:
            f.result()


def _encode_cpu(
    x: torch.Tensor,
    enc: Encoder,
    a: float,
    b: float,
    bits: int,
    packbits: bool,
    work: torch.dtype,
) -> torch.Tensor | None:
    """Per-tensor encoding on the CPU with preallocated chunk buffers, or None.

    Same codes as :meth:`Encoder.encode`. With at most ``_COUNT_MAX``
    thresholds the code is counted directly on the data, ``sum_j [x >= X_j]``
    (:meth:`Encoder.data_thresholds`: one compare and one byte add per
    threshold). Otherwise, per chunk: ``u = x * a + b`` (two roundings),
    clamp, cell index, one table lookup and a sum truncated into the code
    buffer (:meth:`Encoder.sum_table`; with at most ``_PAIR_CELLS`` cells one
    lookup in a table of cell pairs serves two neighbouring values). The codes
    are then packed into the output words in place. Chunks are sized for the
    L2 cache. With the compiled kernels (:mod:`optiquant.quant.kernels`) and
    more than ``_COUNT_FAST`` thresholds, the table form runs as one fused pass
    instead (whatever the number of thresholds when the kernels run as vector code,
    :func:`optiquant.quant.kernels.vectorized`).
    """
    if x.device.type != "cpu" or (packbits and not _LITTLE) or not enc.grid:
        return None
    numel = x.numel()
    # counting a few thresholds beats the scalar kernel's lookup, not the vector one
    few = enc.n - 1 <= _COUNT_FAST and not kernels.vectorized(x.dtype)
    if kernels.available() and numel >= kernels.MIN_NUMEL and x.dtype == work and not few:
        fused = enc.sum_table(work)
        if fused is not None:  # one compiled pass: codes and packing
            per = codes_per_word(bits) if packbits else 1
            result = memory.empty(-(-numel // per), torch.int64 if packbits else enc.dtype)
            flat_x = x.resolve_neg().contiguous().numpy()
            kernels.encode(flat_x, a, b, enc.cells - 1, fused.numpy(), bits, result.numpy())
            return result
    thr_x = enc.data_thresholds(a, b, work) if enc.n - 1 <= _COUNT_MAX else None
    table = enc.sum_table(work) if thr_x is None else None
    if thr_x is None and table is None:
        return None
    pairs = None
    if table is not None and enc.cells <= _PAIR_CELLS:
        # row 256 * j + i holds (table[i], table[j]), j < cells: a little-endian uint16
        # of the cells of two neighbours (i first) finds both sums at once
        first = table[torch.arange(256).clamp(max=enc.cells - 1)].repeat(enc.cells)
        both = torch.stack([first, table.repeat_interleave(256)], 1)
        pairs = both.contiguous().view(_ROW_DTYPE[2 * table.element_size()]).reshape(-1)
    npw = np.float32 if work == torch.float32 else np.float64
    per = codes_per_word(bits) if packbits else 1
    byte_pack = packbits and bits in (1, 2, 4, 8)
    direct = packbits and bits == 8 and enc.dtype == torch.uint8  # codes are the bytes
    # With several torch threads, the counting path (numpy only) spreads its
    # chunks over Python threads; the lookup path leaves them to torch's own
    # operations (Python threads measured slower there).
    step = per * max(1, (_CHUNK_COUNT if table is None else _CHUNK_CPU) // per)
    threads = torch.get_num_threads() > 1
    workers = _workers(numel, step) if threads and table is None else 1
    xin = x.resolve_neg().numpy() if x.dtype == work else None
    if packbits:
        words = memory.empty(-(-numel // per), torch.int64)
        out_w = words.numpy()
        out_b = out_w.view(np.uint8)
    else:
        words = memory.empty(numel, enc.dtype)
        out_c = words.numpy()
    a_w, b_w, top = npw(a), npw(b), float(enc.cells - 1)

    def buffers() -> dict[str, Any]:
        buf: dict[str, Any] = {}
        if xin is None:
            buf["x"] = torch.empty(step, dtype=work)
        if table is not None:
            buf["u"] = torch.empty(step, dtype=work)
            buf["cell"] = torch.empty(step, dtype=torch.int32)
            buf["cell8"] = np.empty(step + 1, dtype=np.uint8)
            buf["acc"] = torch.empty(step + 2, dtype=work)
        else:
            buf["flag"] = np.empty(step, dtype=np.bool_)
        if packbits:
            buf["codes"] = np.empty(step, dtype=np.uint8)
            buf["fcodes"] = np.empty(step if not byte_pack else 0, dtype=np.float32)
        return buf

    pool = [buffers() for _ in range(workers)]

    def chunk(worker: int, start: int, end: int) -> None:
        buf = pool[worker]
        m = end - start
        if xin is not None:
            xc = xin[start:end]
        else:
            buf["x"][:m].copy_(x[start:end])
            xc = buf["x"][:m].numpy()
        w0, w1 = start // per, -(-end // per)
        n_codes = (w1 - w0) * per
        if not packbits:
            dest = out_c[start:end]
        elif direct:
            dest = out_b[8 * w0 : 8 * w1]
        elif byte_pack or thr_x is not None:
            dest = buf["codes"][:n_codes]
        else:
            dest = buf["fcodes"][:n_codes]
        dm = dest[:m]
        if thr_x is not None:  # count the data thresholds at or below each value
            if thr_x.size == 0:
                dm[...] = 0
            else:
                flag = buf["flag"][:m]
                np.greater_equal(xc, thr_x[0], out=dm.view(np.bool_))
                for t in thr_x[1:]:
                    np.greater_equal(xc, t, out=flag)
                    np.add(dm, flag.view(np.uint8), out=dm)
        else:  # grid cell, one lookup, truncated sum
            assert table is not None
            u_t, acc_t = buf["u"][:m], buf["acc"][:m]
            u, acc = u_t.numpy(), acc_t.numpy()
            np.multiply(xc, a_w, out=u)
            np.add(u, b_w, out=u)
            u_t.clamp_(0.0, top)
            if pairs is None:
                cell_t = buf["cell"][:m]
                np.copyto(cell_t.numpy(), u, casting="unsafe")
                torch.index_select(table, 0, cell_t, out=acc_t)
            else:  # two neighbours per lookup: cell bytes read as one uint16
                m2 = m + (m & 1)
                c8 = buf["cell8"][:m2]
                if m2 > m:
                    c8[m] = 0
                np.copyto(c8[:m], u, casting="unsafe")
                pair_t = buf["cell"][: m2 // 2]
                np.copyto(pair_t.numpy(), c8.view(np.uint16), casting="unsafe")
                torch.index_select(pairs, 0, pair_t, out=buf["acc"][:m2].view(pairs.dtype))
            np.add(acc, u, out=acc)
            if dm.dtype == np.float32:
                np.trunc(acc, out=dm)
            else:
                np.copyto(dm, acc, casting="unsafe")  # truncates
        if not packbits:
            return
        if n_codes > m:
            dest[m:n_codes] = 0
        if byte_pack:
            pack_bytes_into(dest, bits, out_b[8 * w0 : 8 * w1])
        else:
            fcodes = buf["fcodes"][:n_codes]
            if dest.dtype != np.float32:
                np.copyto(fcodes, dest, casting="unsafe")
            pack_float_into(fcodes, bits, out_w[w0:w1])

    _run_chunks(chunk, numel, step, workers)
    return words


def _encode_all(
    x: torch.Tensor,
    enc: Encoder,
    loc: torch.Tensor,
    scale: torch.Tensor,
    group_size: int | None,
    bits: int,
    packbits: bool,
    work: torch.dtype,
) -> torch.Tensor:
    numel = x.numel()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    # grid units: u = x * a + b with a = 1 / (scale h), b = -(loc / scale + lo) / h
    a_all = (1.0 / (safe * enc.h)).to(work)
    b_all = (-(loc / safe + enc.lo) / enc.h).to(work)
    if group_size is None:
        a_s, b_s = float(a_all[0]), float(b_all[0])
        fast = _encode_cpu(x, enc, a_s, b_s, bits, packbits, work)
        if fast is not None:
            return fast
    per = codes_per_word(bits) if packbits else 1
    step = _chunk_len(per, group_size)
    if packbits:
        out = torch.empty(-(-numel // per), dtype=torch.int64, device=x.device)
    else:
        out = torch.empty(numel, dtype=enc.dtype, device=x.device)
    for start in range(0, numel, step):
        end = min(start + step, numel)
        xc = x[start:end]
        if xc.dtype != work:
            xc = xc.to(work)
        if group_size is None:
            codes = enc.encode(xc, a_s, b_s, normalized=True)
        else:
            g0 = start // group_size
            full = (end - start) // group_size
            pieces = []
            if full:
                sl = slice(g0, g0 + full)
                pieces.append(
                    enc.encode(
                        xc[: full * group_size].view(full, group_size),
                        a_all[sl, None],
                        b_all[sl, None],
                        normalized=True,
                    )
                )
            if end - start > full * group_size:
                gi = g0 + full
                pieces.append(
                    enc.encode(
                        xc[full * group_size :],
                        a_all[gi : gi + 1],
                        b_all[gi : gi + 1],
                        normalized=True,
                    )
                )
            codes = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        if packbits:
            out[start // per : -(-end // per)] = pack_words(codes, bits)
        else:
            out[start:end] = codes
    return out


# ------------------------------------------------------------------------------- public
def quantize(
    data: torch.Tensor,
    k: int | None = None,
    n: int | None = None,
    dist: str | None = "gaussian",
    packbits: bool = True,
    beta: float | None = None,
    zero: float | None = None,
    *,
    group_size: int | None = None,
    objective: str = "mse",
    scaling: str = "std",
    sample_size: int = 1 << 18,
    param_dtype: torch.dtype | None = None,
    round_params: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Quantize ``data`` to ``k`` bits (or ``n`` points) under a distributional prior.

    Args:
        data: floating-point tensor of any shape, dtype, device or layout.
        k: bits per value (1..16), so ``n = 2 ** k``; exclusive with ``n``.
        n: number of quantization points (1..65536); codes take ``ceil(log2 n)`` bits.
        dist: one of :data:`METHODS`. ``None`` tries every distribution of
            :data:`DISTS` and keeps the one with the lowest error. ``'lloyd'``
            fits the MSE-optimal codebook to the data.
        packbits: pack the codes into int64 words, ``64 // bits`` per word,
            first code in the highest bits (distquant's layout). Otherwise the
            codes come back in the shape of ``data`` (uint8 for ``n <= 256``,
            int32 above).
        beta: range factor multiplying the standardised codebook. ``None``
            searches it to minimise the ``objective`` on the data (on a sample
            of ``sample_size`` values for larger tensors).
        zero: a value that must be reconstructed exactly (for example ``0.0``
            for pruned weights). It becomes the location, and the bin holding
            it decodes to it. Works with any ``n``, even or odd.
        group_size: fit a location and scale per group of this many consecutive
            values of the flattened tensor (one codebook shared by all groups).
        objective: ``'mse'`` (default) or ``'mae'``, the error the ``beta`` and
            ``dist`` searches minimise.
        scaling: for ``dist='lloyd'``: ``'std'`` (mean and standard deviation)
            or ``'absmax'`` (largest magnitude) per tensor or group.
        sample_size: most values the searches and ``lloyd`` look at.
        param_dtype: dtype the location and scale are rounded to before
            encoding (for example ``torch.float16`` to store them in 16 bits);
            by default the computation dtype.
        round_params: instead of ``param_dtype``, a function mapping the fitted
            float64 ``(loc, scale)`` to the values actually stored (for
            example scales on an 8-bit logarithmic grid).

    Returns:
        ``(q, info)``: codes and a dict that :func:`dequantize` takes as ``**info``.

    Raises:
        TypeError: for a non-tensor or non-floating ``data``, or badly typed options.
        ValueError: for NaN/inf values or out-of-range options.

    >>> x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    >>> q, info = quantize(x, k=4, dist="lloyd")
    >>> q.dtype, q.shape, info["bits"]
    (torch.int64, torch.Size([63]), 4)
    >>> float(((dequantize(q, **info) - x) ** 2).mean()) < 0.011
    True
    """
    data = _check_data(data)
    n_pts = _check_n(k, n)
    if dist is not None and dist not in METHODS:
        raise ValueError(f"dist must be one of {METHODS} or None, got {dist!r}")
    if not isinstance(packbits, bool):
        raise TypeError(f"packbits must be a bool, got {type(packbits).__name__}")
    beta_v = _check_float("beta", beta, positive=True)
    zero_v = _check_float("zero", zero)
    if dist == "lloyd" and beta_v is not None:
        raise ValueError("beta does not apply to dist='lloyd' (its codebook is fitted)")
    if objective not in ("mse", "mae"):
        raise ValueError(f"objective must be 'mse' or 'mae', got {objective!r}")
    if scaling not in _SCALINGS:
        raise ValueError(f"scaling must be one of {_SCALINGS}, got {scaling!r}")
    if group_size is not None and (
        isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1
    ):
        raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 16:
        raise ValueError(f"sample_size must be an int >= 16, got {sample_size!r}")

    bits = _bits_for(n_pts)
    work = torch.float64 if data.dtype == torch.float64 else torch.float32
    x = data.detach().reshape(-1)
    numel = x.numel()
    if numel and x.dtype not in (torch.float32, torch.float64):
        x = x.to(work)
    sums: tuple[torch.Tensor, torch.Tensor] | None = None
    if numel:
        if group_size is None:
            # finite sums prove finite data (a NaN or inf makes them non-finite)
            sums = (x.sum(), torch.dot(x, x))
            finite = math.isfinite(float(sums[0])) and math.isfinite(float(sums[1]))
        else:
            finite = False
        if not finite:
            lo, hi = torch.aminmax(x)
            if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
                raise ValueError("data contains NaN or infinite values; quantize finite data only")
    info: dict[str, Any] = {
        "dist": dist if dist is not None else "gaussian",
        "n": n_pts,
        "bits": bits,
        "packbits": packbits,
        "beta": beta_v if beta_v is not None else 1.0,
        "zero": zero_v,
        "group_size": group_size,
        "shape": list(data.shape),
        "n_elems": numel,
        "dtype": str(data.dtype).removeprefix("torch."),
        "objective": objective,
    }
    if numel == 0:
        levels, _ = dist_codebook("gaussian", n_pts, 1.0)
        info.update(loc=0.0, scale=0.0, levels=levels)
        q = (
            torch.zeros(0, dtype=torch.int64, device=data.device)
            if packbits
            else torch.zeros(data.shape, dtype=code_dtype(n_pts), device=data.device)
        )
        return q, info

    stats = _Stats(x, group_size, sums)
    snap = zero_v is not None
    candidates = list(DISTS) if dist is None else [dist]
    best: tuple[float, str, float, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    best = (math.inf, "", 1.0, torch.empty(0), torch.empty(0), torch.empty(0), torch.empty(0))
    base: SortedSample | None = None
    for name in candidates:
        if round_params is not None:
            loc, scale = (t.double() for t in round_params(*stats.fit(name, zero_v, scaling)))
        else:
            loc, scale = _round_params(*stats.fit(name, zero_v, scaling), param_dtype or work)
        sample = None
        if name == "lloyd" or beta_v is None or len(candidates) > 1:
            if group_size is None and base is None:
                base = stats.sample(sample_size)
            crit = "mse" if name == "lloyd" else objective
            sample = _z_sample(x, loc, scale, group_size, sample_size, crit, base)
        if name == "lloyd":
            assert sample is not None
            lv, e = _fit_lloyd(sample, n_pts, snap)
            if objective == "mae":
                e = sample.mae(lv, midpoints(lv))
            th, b = midpoints(lv), 1.0
        else:
            if beta_v is None:
                assert sample is not None
                b, e = _search_beta(sample, name, n_pts, snap, objective)
            else:
                b = beta_v
                e = 0.0
            lv, th = dist_codebook(name, n_pts, b)
            if snap:
                lv = _snap(lv, th, 0.0)
            if sample is not None and beta_v is not None:
                e = sample.error(lv, th, objective)
        if e < best[0] or not best[1]:
            best = (e, name, b, lv, th, loc, scale)
    _, name, b, lv, th, loc, scale = best
    enc = Encoder(th, device=x.device)
    q = _encode_all(x, enc, loc.to(x.device), scale.to(x.device), group_size, bits, packbits, work)
    if not packbits:
        q = q.view(data.shape)
    per_tensor = group_size is None
    info.update(
        dist=name,
        beta=b,
        loc=float(loc[0]) if per_tensor else loc.to(work),
        scale=float(scale[0]) if per_tensor else scale.to(work),
        levels=lv,
    )
    return q, info


def _byte_table(lut: torch.Tensor, bits: int) -> torch.Tensor:
    """(256, 8 // bits) table: the values of the codes packed in each byte."""
    per = 8 // bits
    byte = torch.arange(256, device=lut.device)
    shifts = torch.arange(per - 1, -1, -1, device=lut.device) * bits
    codes = (byte[:, None] >> shifts) & ((1 << bits) - 1)
    codes = codes.clamp(max=lut.numel() - 1)
    return lut[codes]


_ROW_DTYPE = {2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.complex128}


def _decode_cpu(
    q: torch.Tensor, lut: torch.Tensor, bits: int, packbits: bool, numel: int
) -> torch.Tensor | None:
    """Per-tensor decoding on the CPU into a fresh output, chunk by chunk, or None.

    Packed widths 1, 2, 4, 8 decode each byte with one lookup in a table of
    the byte's ``8 // bits`` values (read as one wide element), straight into
    the output; other widths cut each word into groups of at most 31 bits,
    then into codes, and look the codes up one by one.
    """
    if q.device.type != "cpu" or (packbits and not _LITTLE):
        return None
    n_pts = lut.numel()
    out, reused = memory.new_output(numel, lut.dtype)
    esize = lut.element_size()
    if not packbits:
        flat = q.reshape(-1)
        if flat.dtype not in (torch.uint8, torch.int32, torch.int64, torch.int16):
            flat = flat.to(torch.int64)
        step = _CHUNK_CPU
        idx = torch.empty(step, dtype=torch.int32)
        for start in range(0, numel, step):
            end = min(start + step, numel)
            c = flat[start:end]
            if n_pts < 256 or c.dtype != torch.uint8:
                lo, hi = torch.aminmax(c)
                if int(lo) < 0 or int(hi) >= n_pts:
                    raise ValueError(f"codes must lie in [0, {n_pts - 1}]")
            ci = c if c.dtype in (torch.int32, torch.int64) else idx[: end - start].copy_(c)
            torch.index_select(lut, 0, ci, out=out[start:end])
        return out
    per = codes_per_word(bits)
    words = q.reshape(-1).resolve_neg().contiguous().numpy()
    with kernels.stores_for(reused):
        if numel >= kernels.MIN_NUMEL and kernels.decode_words(words, lut, bits, numel, out):
            return out
    n_words = words.size
    if bits in (1, 2, 4, 8):
        per_byte = 8 // bits
        table = _byte_table(lut, bits).contiguous()  # (256, per_byte)
        unit = 1  # bytes per lookup: two when the 65536-row table stays small (512 KiB)
        if 2 * per_byte * esize <= 8:
            pair = torch.cat(
                [table.repeat_interleave(256, dim=0), table.repeat(256, 1)], dim=1
            )  # row 256 * i + j decodes bytes (i, j)
            # a little-endian uint16 reads bytes (b0, b1) as 256 * b1 + b0
            table = pair.view(256, 256, -1).transpose(0, 1).reshape(65536, -1).contiguous()
            unit = 2
        vals = per_byte * unit  # values per lookup
        row = vals * esize
        table = table.view(_ROW_DTYPE[row]).reshape(-1) if row in _ROW_DTYPE else table
        wstep = max(1, _CHUNK_CPU // per)
        wbuf = np.empty(wstep, dtype=np.int64)
        n_idx = 8 // unit  # lookups per word
        idx = torch.empty(wstep * n_idx, dtype=torch.int32)
        idx_np = idx.numpy()
        tail_out = torch.empty(per, dtype=lut.dtype)
        for w0 in range(0, n_words, wstep):
            w1 = min(w0 + wstep, n_words)
            k = w1 - w0
            wb = wbuf[:k]
            np.copyto(wb, words[w0:w1])
            wb.byteswap(inplace=True)  # byte order = code order
            src = wb.view(np.uint8) if unit == 1 else wb.view(np.uint16)
            np.copyto(idx_np[: n_idx * k], src, casting="unsafe")
            start, end = w0 * per, min(w1 * per, numel)
            full = (end - start) // per  # words whose codes all fit in the output
            if full:
                dst = out[start : start + full * per]
                dst = dst.view(table.dtype) if table.dim() == 1 else dst.view(-1, vals)
                torch.index_select(table, 0, idx[: n_idx * full], out=dst)
            if full < k:  # the last, partial word
                dst = tail_out.view(table.dtype) if table.dim() == 1 else tail_out.view(-1, vals)
                torch.index_select(table, 0, idx[n_idx * full : n_idx * k], out=dst)
                out[start + full * per : end] = tail_out[: end - start - full * per]
        return out
    if bits <= 7 and lut.element_size() <= 4:
        return _decode_pairs(words, lut, bits, numel, out)
    # Words -> groups of g codes (g divides per, at most 31 bits) -> code j of
    # every group at once, looked up straight into every g-th output value.
    g = max(d for d in range(1, per + 1) if per % d == 0 and d * bits <= 31)
    ng = per // g
    wstep = max(1, _CHUNK_COUNT // per)
    grp = torch.empty(wstep, ng, dtype=torch.int64)
    grp32 = torch.empty(wstep * ng, dtype=torch.int32)
    code = torch.empty(wstep * ng, dtype=torch.int32)
    words_t = torch.from_numpy(words)
    tail = torch.empty(per, dtype=lut.dtype)
    mask = (1 << bits) - 1
    for w0 in range(0, n_words, wstep):
        w1 = min(w0 + wstep, n_words)
        k = w1 - w0
        gk = grp[:k]
        for j in range(ng):
            torch.bitwise_right_shift(words_t[w0:w1], bits * (per - g * (j + 1)), out=gk[:, j])
        gk.bitwise_and_((1 << (bits * g)) - 1)
        gi = grp32[: k * ng]
        gi.copy_(gk.reshape(-1))
        start, end = w0 * per, min(w1 * per, numel)
        full = (end - start) // per
        dst = out[start : start + k * per] if full == k else tail.repeat(k)
        cols = dst.view(k * ng, g)
        for i in range(g):
            c = code[: k * ng]
            torch.bitwise_right_shift(gi, bits * (g - 1 - i), out=c)
            c.bitwise_and_(mask)
            if n_pts <= mask:
                c.clamp_(max=n_pts - 1)
            torch.index_select(lut, 0, c, out=cols[:, i])
        if full < k:
            out[start:end] = dst[: end - start]
    return out


def _decode_pairs(
    words: np.ndarray, lut: torch.Tensor, bits: int, numel: int, out: torch.Tensor
) -> torch.Tensor:
    """Decode two codes per lookup (a table of value pairs) for widths up to 7 bits.

    Words are taken one at a time (an even number of codes per word) or two
    at a time; each pair of consecutive codes is cut out of its word (or, for
    the pair that straddles two words, out of both) into a column of the index
    array, and one lookup per pair writes two output values.
    """
    per = 64 // bits
    span = 1 if per % 2 == 0 else 2  # words per block: an even number of codes
    pc = span * per // 2  # pairs per block
    n_words = words.size
    n_pts = lut.numel()
    vals = lut[torch.arange(1 << bits).clamp(max=n_pts - 1)]
    pair_rows = torch.stack([vals.repeat_interleave(1 << bits), vals.repeat(1 << bits)], 1)
    table = pair_rows.contiguous().view(_ROW_DTYPE[2 * lut.element_size()]).reshape(-1)
    full_blocks = n_words // span
    bstep = max(1, _CHUNK_COUNT // (span * per))
    words_t = torch.from_numpy(words)
    idx = torch.empty(bstep, pc, dtype=torch.int64)
    idx_np = idx.numpy()
    cols = np.empty((span, bstep), dtype=np.int64)
    pair_mask = (1 << (2 * bits)) - 1
    for b0 in range(0, full_blocks, bstep):
        b1 = min(b0 + bstep, full_blocks)
        kb = b1 - b0
        for w in range(span):  # each word of the block as a contiguous column
            np.copyto(cols[w, :kb], words[b0 * span + w : b1 * span : span])
        ik_np = idx_np[:kb]
        for j in range(pc):
            c = 2 * j  # first code of the pair, within the block
            w, i = divmod(c, per)
            if i + 1 < per:  # both codes in word w
                np.right_shift(cols[w, :kb], bits * (per - 2 - i), out=ik_np[:, j])
            else:  # last code of word w, first of word w + 1
                np.left_shift(cols[w, :kb], bits, out=ik_np[:, j])
                ik_np[:, j] |= cols[w + 1, :kb] >> (bits * (per - 1))
        np.bitwise_and(ik_np, pair_mask, out=ik_np)
        ik = idx[:kb]
        start = b0 * span * per
        stop = min(b1 * span * per, numel)
        n_pairs = kb * pc
        if stop - start == 2 * n_pairs:
            torch.index_select(table, 0, ik.view(-1), out=out[start:stop].view(table.dtype))
        else:
            vals = torch.index_select(table, 0, ik.view(-1)).view(lut.dtype)
            out[start:stop] = vals[: stop - start]
    if full_blocks * span < n_words:  # a last, odd word
        rest = unpack_words(words_t[full_blocks * span :], bits, numel - full_blocks * span * per)
        idx_rest = rest.to(torch.int32).clamp_(max=n_pts - 1)
        out[full_blocks * span * per :] = torch.index_select(lut, 0, idx_rest)
    return out


_INFO_KEYS = {"bits", "zero", "objective", "abs_error", "mse"}


def dequantize(
    q: torch.Tensor,
    *,
    dist: str,
    n: int,
    packbits: bool,
    shape: list[int] | tuple[int, ...],
    n_elems: int,
    loc: float | torch.Tensor = 0.0,
    scale: float | torch.Tensor = 1.0,
    beta: float | None = 1.0,
    levels: torch.Tensor | None = None,
    group_size: int | None = None,
    dtype: str = "float32",
    **extra: Any,
) -> torch.Tensor:
    """Values of the codes ``q`` from :func:`quantize` (``dequantize(q, **info)``).

    Returns a tensor of the original shape, dtype and device. ``q`` is not
    modified, so it can be decoded any number of times.

    >>> q, info = quantize(torch.tensor([0.0, 1.0, 2.0, 3.0]), n=4, dist="lloyd")
    >>> dequantize(q, **info)
    tensor([0., 1., 2., 3.])
    """
    unknown = set(extra) - _INFO_KEYS
    if unknown:
        raise TypeError(f"dequantize got unexpected info keys {sorted(unknown)}")
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    n_pts = _check_n(None, n)
    bits = _bits_for(n_pts)
    out_dtype = getattr(torch, str(dtype), None)
    if not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point:
        raise ValueError(f"dtype must name a floating torch dtype, got {dtype!r}")
    numel = int(n_elems)
    if math.prod(shape) != numel:
        raise ValueError(f"shape {list(shape)} does not hold n_elems={numel} values")
    if packbits:
        if q.dtype != torch.int64:
            raise TypeError(f"packed codes must be int64, got {q.dtype}")
        per = codes_per_word(bits)
        if q.numel() != -(-numel // per):
            raise ValueError(
                f"expected {-(-numel // per)} packed words for {numel} values of {bits} bits, "
                f"got {q.numel()}"
            )
    else:
        if q.is_floating_point() or q.dtype == torch.bool or q.is_complex():
            raise TypeError(f"codes must be an integer tensor, got {q.dtype}")
        if q.numel() != numel:
            raise ValueError(f"expected {numel} codes, got {q.numel()}")
    work = torch.float64 if out_dtype == torch.float64 else torch.float32
    if levels is None:
        if dist == "lloyd":
            raise ValueError("levels are required to decode dist='lloyd'")
        lv, _ = dist_codebook(dist, n_pts, 1.0 if beta is None else float(beta))
    else:
        lv = torch.as_tensor(levels, dtype=torch.float64).reshape(-1).cpu()
        if lv.numel() != n_pts:
            raise ValueError(f"levels must have n={n_pts} entries, got {lv.numel()}")
    device = q.device
    if numel == 0:
        return torch.empty(list(shape), dtype=out_dtype, device=device)
    per_tensor = group_size is None
    if per_tensor:
        lut = (float(loc) + float(scale) * lv).to(device=device, dtype=out_dtype)
        if float(scale) == 0.0:
            lut = torch.full_like(lut, float(loc))
        fast = _decode_cpu(q, lut, bits, packbits, numel)
        if fast is not None:
            return fast.view(list(shape))
    out = torch.empty(numel, dtype=out_dtype, device=device)
    if not per_tensor:
        lut = lv.to(device=device, dtype=work)
        gs = int(group_size)  # type: ignore[arg-type]
        loc_t = torch.as_tensor(loc, dtype=work, device=device).reshape(-1)
        scale_t = torch.as_tensor(scale, dtype=work, device=device).reshape(-1)
        if loc_t.numel() != -(-numel // gs) or scale_t.numel() != loc_t.numel():
            raise ValueError(
                f"group_size={gs} needs {-(-numel // gs)} loc and scale values, "
                f"got {loc_t.numel()} and {scale_t.numel()}"
            )
    per = codes_per_word(bits) if packbits else 1
    step = _chunk_len(per, group_size)
    flat_q = q.reshape(-1)
    table = _byte_table(lut, bits) if packbits and bits in (1, 2, 4, 8) else None
    for start in range(0, numel, step):
        end = min(start + step, numel)
        if packbits:
            w = flat_q[start // per : -(-end // per)]
            if table is not None:
                by = w.contiguous().view(torch.uint8)
                if _LITTLE:
                    by = by.view(-1, 8).flip(1).reshape(-1)
                idx = by.to(torch.int32)
                if per_tensor and idx.numel() * table.shape[1] == end - start:
                    # decode straight into the output: no intermediate copy
                    torch.index_select(table, 0, idx, out=out[start:end].view(-1, table.shape[1]))
                    continue
                vals = torch.index_select(table, 0, idx).reshape(-1)[: end - start]
            else:
                codes = unpack_words(w, bits, end - start)
                vals = torch.index_select(lut, 0, codes.to(torch.int32).clamp_(max=n_pts - 1))
        else:
            codes = flat_q[start:end].to(torch.int32)
            if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= n_pts):
                raise ValueError(f"codes must lie in [0, {n_pts - 1}]")
            vals = torch.index_select(lut, 0, codes)
        if per_tensor:
            out[start:end] = vals
        else:
            g0 = start // gs
            full = (end - start) // gs
            if full:
                sl = slice(g0, g0 + full)
                v = vals[: full * gs].view(full, gs)
                out[start : start + full * gs] = torch.addcmul(
                    loc_t[sl, None], v, scale_t[sl, None]
                ).reshape(-1)
            if end - start > full * gs:
                gi = g0 + full
                out[start + full * gs : end] = loc_t[gi] + scale_t[gi] * vals[full * gs :]
    return out.view(list(shape))
