"""Entropy coding of quantization codes, and the sizes to compare it with.

:func:`rans_encode` compresses a stream of codes with a static-model rANS coder
(order-0 frequencies, 32-bit states, 16-bit output words), interleaved over many
lanes so every step is one vectorised numpy operation. :func:`rans_decode`
inverts it exactly. :func:`size_report` puts side by side, in bits per value:
the fixed-rate size, the order-0 entropy of the codes, the measured rANS size
(everything included: words, final states and the frequency table), and the
Gaussian rate-distortion bound at the achieved error (the fewest bits any coder
can spend on a Gaussian source of the same variance at that MSE).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

__all__ = [
    "RansStream",
    "code_entropy",
    "gaussian_rd_bits",
    "rans_decode",
    "rans_encode",
    "size_report",
]

_LOW = 1 << 16  # states live in [2**16, 2**32)


def _codes_array(codes: torch.Tensor | np.ndarray, n: int) -> np.ndarray:
    if isinstance(codes, torch.Tensor):
        arr = codes.detach().reshape(-1).cpu().numpy()
    else:
        arr = np.asarray(codes).reshape(-1)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"codes must be integers, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= n):
        raise ValueError(f"codes must lie in [0, {n - 1}]")
    return arr.astype(np.int64, copy=False)


def code_entropy(codes: torch.Tensor | np.ndarray, n: int) -> float:
    """Order-0 empirical entropy of ``codes`` in bits per code.

    >>> code_entropy(torch.tensor([0, 1, 2, 3]), 4)
    2.0
    """
    arr = _codes_array(codes, n)
    if arr.size == 0:
        return 0.0
    p = np.bincount(arr, minlength=n).astype(np.float64) / arr.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def gaussian_rd_bits(mse: float, variance: float) -> float:
    """Shannon's ``R(D) = max(0, log2(variance / mse) / 2)`` for a Gaussian source.

    >>> gaussian_rd_bits(1 / 16, 1.0)
    2.0
    """
    if mse <= 0:
        return math.inf
    return max(0.0, 0.5 * math.log2(variance / mse))


@dataclasses.dataclass(frozen=True)
class RansStream:
    """An rANS-coded code stream: everything needed to decode it.

    >>> s = rans_encode(torch.tensor([1, 1, 1, 0]), 2)
    >>> s.numel, s.freqs.tolist()
    (4, [16384, 49152])
    """

    words: np.ndarray  # uint16 output words, in decoding order
    states: np.ndarray  # uint32 final state of each lane
    freqs: np.ndarray  # uint32 quantized frequency of each symbol (sums to 2**precision)
    precision: int
    numel: int

    @property
    def nbytes(self) -> int:
        """Total stored size: words, lane states, and the table (2 bytes per symbol)."""
        return 2 * self.words.size + 4 * self.states.size + 2 * self.freqs.size + 8


def _quantize_freqs(counts: np.ndarray, precision: int) -> np.ndarray:
    total = counts.sum()
    m = 1 << precision
    f = np.floor(counts.astype(np.float64) * m / max(total, 1)).astype(np.int64)
    f[(counts > 0) & (f == 0)] = 1
    diff = m - int(f.sum())
    # give or take the difference from the most frequent symbols
    order = np.argsort(-counts)
    i = 0
    while diff != 0:
        j = order[i % len(order)]
        if diff > 0:
            f[j] += diff
            diff = 0
        elif f[j] > 1:
            take = min(int(f[j]) - 1, -diff)
            f[j] -= take
            diff += take
        i += 1
    return f.astype(np.uint64)


def rans_encode(
    codes: torch.Tensor | np.ndarray, n: int, *, precision: int = 16, lanes: int | None = None
) -> RansStream:
    """Entropy-code ``codes`` (values in ``[0, n)``) with interleaved rANS.

    >>> x = torch.tensor([0, 0, 0, 1, 0, 0, 2, 0] * 100)
    >>> s = rans_encode(x, 4)
    >>> s.nbytes < 800 * 2 // 8, bool((rans_decode(s) == x.numpy()).all())
    (True, True)
    """
    arr = _codes_array(codes, n)
    present = int((np.bincount(arr, minlength=n) > 0).sum()) if arr.size else 0
    if not 1 <= precision <= 16 or present > (1 << precision):
        raise ValueError(f"precision must be in [1, 16] and hold all {present} symbols")
    counts = np.bincount(arr, minlength=n)
    freqs = _quantize_freqs(counts, precision) if arr.size else np.zeros(n, np.uint64)
    cum = np.concatenate([[0], np.cumsum(freqs)[:-1]]).astype(np.uint64)
    numel = arr.size
    if lanes is None:
        lanes = min(1024, max(1, numel // 2048))
    nl = max(1, min(lanes, numel))
    steps = -(-numel // nl) if numel else 0
    padded = np.zeros(steps * nl, dtype=np.int64)
    padded[:numel] = arr
    sym = padded.reshape(steps, nl)
    valid_last = np.arange(nl) < numel - (steps - 1) * nl if steps else np.ones(nl, bool)
    x = np.full(nl, _LOW, dtype=np.uint64)
    emitted: list[np.ndarray] = [np.zeros(0, np.uint16)] * steps
    prec = np.uint64(precision)
    for t in range(steps - 1, -1, -1):
        s = sym[t]
        f = freqs[s]
        c = cum[s]
        valid = valid_last if t == steps - 1 else None
        x_max = ((np.uint64(_LOW) >> prec) << np.uint64(16)) * f
        emit = x >= x_max
        if valid is not None:
            emit &= valid
        emitted[t] = (x[emit] & np.uint64(0xFFFF)).astype(np.uint16)
        x = np.where(emit, x >> np.uint64(16), x)
        fs = np.where(f == 0, np.uint64(1), f)
        new = ((x // fs) << prec) + (x % fs) + c
        x = new if valid is None else np.where(valid, new, x)
    words = np.concatenate(emitted) if steps else np.zeros(0, np.uint16)
    return RansStream(words, x.astype(np.uint32), freqs.astype(np.uint32), precision, numel)


def rans_decode(stream: RansStream) -> np.ndarray:
    """The codes of an :class:`RansStream` (int64 numpy array).

    >>> rans_decode(rans_encode(torch.tensor([2, 0, 2, 1]), 3)).tolist()
    [2, 0, 2, 1]
    """
    numel = stream.numel
    nl = stream.states.size
    if numel == 0:
        return np.zeros(0, np.int64)
    steps = -(-numel // nl)
    freqs = stream.freqs.astype(np.uint64)
    if int(freqs.sum()) != 1 << stream.precision:
        raise ValueError("corrupted rANS stream: frequencies do not sum to 2**precision")
    cum = np.concatenate([[0], np.cumsum(freqs)[:-1]]).astype(np.uint64)
    slot = np.repeat(np.arange(freqs.size), freqs.astype(np.int64))
    mask = np.uint64((1 << stream.precision) - 1)
    prec = np.uint64(stream.precision)
    x = stream.states.astype(np.uint64)
    out = np.empty((steps, nl), dtype=np.int64)
    words = stream.words.astype(np.uint64)
    ptr = 0
    for t in range(steps):
        s = slot[(x & mask).astype(np.int64)]
        out[t] = s
        nx = freqs[s] * (x >> prec) + (x & mask) - cum[s]
        if t == steps - 1:
            valid = np.arange(nl) < numel - t * nl
            nx = np.where(valid, nx, x)
        need = nx < np.uint64(_LOW)
        if t == steps - 1:
            need &= valid
        k = int(need.sum())
        if k:
            if ptr + k > words.size:
                raise ValueError("corrupted rANS stream: it ends early")
            nx[need] = (nx[need] << np.uint64(16)) | words[ptr : ptr + k]
            ptr += k
        x = nx
    return out.reshape(-1)[:numel]


def size_report(
    codes: torch.Tensor | np.ndarray,
    n: int,
    *,
    mse: float | None = None,
    variance: float | None = None,
    fixed_bits: float | None = None,
) -> dict[str, float]:
    """Bits per value: fixed-rate, order-0 entropy, measured rANS, Gaussian R(D) bound.

    >>> r = size_report(torch.tensor([0, 1, 1, 1] * 64), 4)
    >>> r["fixed"], round(r["entropy"], 3)
    (2.0, 0.811)
    """
    arr = _codes_array(codes, n)
    numel = max(arr.size, 1)
    report = {
        "fixed": float(fixed_bits)
        if fixed_bits is not None
        else float(max(1, (n - 1).bit_length())),
        "entropy": code_entropy(arr, n),
        "rans": 8.0 * rans_encode(arr, n).nbytes / numel if arr.size else 0.0,
    }
    if mse is not None and variance is not None:
        report["rd_bound"] = gaussian_rd_bits(mse, variance)
    return report
