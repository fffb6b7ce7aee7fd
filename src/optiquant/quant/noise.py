"""Table noise for DiffQ's ``fast_noise``: i.i.d. samples from a counter-based hash.

Sample ``i`` of a draw with keys ``(k1, k2)`` (two 32-bit words taken from
torch's default generator, so ``torch.manual_seed`` fixes the stream) is
``table[hash_index(i, k1, k2)]``: the hash mixes the counter and the keys with
two rounds of a 32-bit integer finaliser and keeps the top 16 bits, which index
a table of ``2**16`` equiprobable quantiles of the distribution (rescaled to unit
variance). Every sample can be recomputed from its position, so the DiffQ node
never stores its noise: on CPUs with AVX-512 (see :mod:`optiquant.quant.simd`)
the forward adds it to the weights and the backward reduces the gradient against
it, one fused pass each, without a noise tensor in memory. Elsewhere the same
samples are computed with torch operations, so a run gives the same numbers on
every path.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from optiquant.quant import kernels, memory, simd

__all__ = ["HashNoise", "hash_index", "noise_table"]

TABLE_BITS = 16  # two samples per 32-bit hash
_MASK32 = 0xFFFFFFFF
_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
_TABLES: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}
_KINDS = ("gaussian", "uniform")
_MAX_FUSED = 1 << 31  # counters and group indices stay in 32-bit lanes


def noise_table(kind: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``2**16`` equiprobable values of the standard noise (quantiles at ``(k + 1/2) / 2**16``).

    >>> t = noise_table("gaussian", torch.float64, torch.device("cpu"))
    >>> t.numel(), round(float(t.square().mean()), 12)
    (65536, 1.0)
    """
    key = (kind, dtype, device)
    table = _TABLES.get(key)
    if table is None:
        levels = 2**TABLE_BITS
        probs = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels
        if kind == "gaussian":
            values = torch.special.ndtri(probs)
            values = values / values.square().mean().sqrt()  # exactly unit variance
        elif kind == "uniform":
            values = probs - 0.5
        else:
            raise ValueError(f"noise must be one of {_KINDS}, got {kind!r}")
        table = _TABLES[key] = values.to(dtype=dtype, device=device)
    return table


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The 32-bit finaliser on int64 tensors holding values below ``2**32`` (in place)."""
    for shift, mult in ((16, _MULTIPLIERS[0]), (15, _MULTIPLIERS[1])):
        x.bitwise_xor_(x >> shift).mul_(mult).bitwise_and_(_MASK32)
    return x.bitwise_xor_(x >> 16)


def _mix32_numpy(x: np.ndarray) -> np.ndarray:
    """The 32-bit finaliser on a uint32 array (in place, wrapping products)."""
    for shift, mult in ((16, _MULTIPLIERS[0]), (15, _MULTIPLIERS[1])):
        x ^= x >> np.uint32(shift)
        x *= np.uint32(mult)
    x ^= x >> np.uint32(16)
    return x


def hash_index(start: int, count: int, k1: int, k2: int, device: torch.device) -> torch.Tensor:
    """Table indices (int32 on CPU, int64 elsewhere; in ``[0, 2**16)``) of samples
    ``start`` to ``start + count - 1``.

    Samples ``2j`` and ``2j + 1`` take the top and bottom 16 bits of
    ``mix(mix(j ^ k1) + k2)``, with ``mix`` a 32-bit integer finaliser.

    >>> hash_index(0, 4, 1, 2, torch.device("cpu")).tolist()
    [51967, 58256, 53523, 8577]
    """
    if device.type == "cpu":  # numpy's uint32 arithmetic wraps, as the kernels' lanes do
        counter = np.arange(start, start + count, dtype=np.uint64)
        x = (counter >> np.uint64(1)).astype(np.uint32)
        x = _mix32_numpy(x ^ np.uint32(k1 & _MASK32))
        x = _mix32_numpy(x + np.uint32(k2 & _MASK32))
        odd = (counter & np.uint64(1)).astype(bool)
        index = np.where(odd, x & np.uint32(0xFFFF), x >> np.uint32(16))
        return torch.from_numpy(index.view(np.int32))
    return _hash_index_torch(start, count, k1, k2, device)


def _hash_index_torch(
    start: int, count: int, k1: int, k2: int, device: torch.device
) -> torch.Tensor:
    """:func:`hash_index` with torch's int64 operations (any device)."""
    counter = torch.arange(start, start + count, dtype=torch.int64, device=device)
    x = _mix32((counter >> 1).bitwise_and_(_MASK32).bitwise_xor_(k1 & _MASK32))
    x = _mix32(x.add_(k2 & _MASK32).bitwise_and_(_MASK32))
    return torch.where(counter.bitwise_and_(1).bool(), x & 0xFFFF, x >> 16)


class HashNoise:
    """One draw of table noise: the keys, and the ways to use the samples.

    ``HashNoise.draw(kind)`` takes fresh keys from torch's default generator.
    :meth:`samples` materialises them; :meth:`fused` says whether the fused
    CPU kernels can apply them to a tensor without materialising them.

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> a = HashNoise.draw("gaussian").samples(4, torch.float32, torch.device("cpu"))
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> torch.equal(a, HashNoise.draw("gaussian").samples(4, torch.float32, torch.device("cpu")))
    True
    """

    def __init__(self, kind: str, k1: int, k2: int) -> None:
        if kind not in _KINDS:
            raise ValueError(f"noise must be one of {_KINDS}, got {kind!r}")
        self.kind, self.k1, self.k2 = kind, k1 & _MASK32, k2 & _MASK32

    @classmethod
    def draw(cls, kind: str) -> HashNoise:
        """A fresh draw: two 32-bit keys from torch's default CPU generator."""
        k1, k2 = torch.randint(0, 2**32, (2,), dtype=torch.int64).tolist()
        return cls(kind, k1, k2)

    def samples(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The first ``numel`` samples of this draw (a new tensor).

        >>> noise = HashNoise("uniform", 1, 2)
        >>> x = noise.samples(5, torch.float32, torch.device("cpu"))
        >>> bool(x.abs().max() < 0.5), x.shape
        (True, torch.Size([5]))
        """
        index = hash_index(0, numel, self.k1, self.k2, device)
        return noise_table(self.kind, dtype, device)[index]

    @staticmethod
    def fused(weight: torch.Tensor) -> bool:
        """Whether :func:`add_noise` and :func:`noise_backward` run fused for ``weight``."""
        return (
            weight.device.type == "cpu"
            and weight.dtype == torch.float32
            and 16 <= weight.numel() < _MAX_FUSED
            and kernels.vectorized(torch.float32)
        )


def _require_fused(tensor: torch.Tensor) -> None:
    if not HashNoise.fused(tensor):
        raise ValueError(
            "the fused noise kernels need a float32 CPU tensor of 16 to 2**31 - 1 entries"
            " and the vector kernels (numba, AVX-512); got"
            f" {tensor.dtype} on {tensor.device} with {tensor.numel()} entries"
        )


@functools.lru_cache(maxsize=64)
def _group_offsets(gs: int) -> np.ndarray:
    """Rows of 16 lane offsets to the group of a step's first lane.

    For ``gs < 16`` row ``r`` (the first lane's position in its group) holds
    ``(r + l) // gs``; for larger groups row ``c`` (lanes left in the first
    group, at most 16) holds ``l >= c``.
    """
    lanes = np.arange(16)
    if gs < 16:
        rows = [(r + lanes) // gs for r in range(gs)]
    else:
        rows = [(lanes >= c).astype(np.int64) for c in range(17)]
    table = np.ascontiguousarray(np.stack(rows).astype(np.int32).reshape(-1))
    table.flags.writeable = False  # shared between calls
    return table


def _parts(n: int, gs: int) -> tuple[int, int]:
    """``(span, items)``: work split into items of ``span`` values that start a 16-lane
    step and a group at once (so threads never share a group)."""
    span = 16 * gs * max(1, 4096 // (16 * gs))
    return span, -(-(n - n % 16) // span)


def add_noise(weight: torch.Tensor, amp: torch.Tensor, gs: int, noise: HashNoise) -> torch.Tensor:
    """``weight + amp[group] * samples`` (a new tensor; groups of ``gs`` consecutive
    entries) with the samples of ``noise``, in one fused pass; needs
    :meth:`HashNoise.fused` to hold for ``weight``."""
    _require_fused(weight)
    flat = weight.detach().reshape(-1).contiguous()
    out = memory.empty(flat.numel(), flat.dtype)
    args = (
        flat.numpy(),
        amp.detach().to(torch.float32).contiguous().numpy(),
        _group_offsets(gs),
        gs,
        noise.k1,
        noise.k2,
        noise_table(noise.kind, torch.float32, flat.device).numpy(),
        out.numpy(),
    )
    span, items = _parts(flat.numel(), gs)
    kernels.run_split(_forward_kernel, items, 4, span, *args)
    return out.view(weight.shape)


def noise_backward(
    grad: torch.Tensor, gs: int, groups: int, noise: HashNoise
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(copy of grad, per-group sums of grad * samples)`` (float32) for the samples
    of ``noise`` and groups of ``gs`` consecutive entries, in one fused pass; needs
    :meth:`HashNoise.fused` to hold for ``grad``."""
    _require_fused(grad)
    flat = grad.reshape(-1).contiguous()
    gout = memory.empty(flat.numel(), flat.dtype)
    narrow = gs in (1, 2, 4, 8)
    sums = torch.zeros(groups if narrow else 1, dtype=torch.float32)
    wide = np.zeros(1 if narrow else groups, dtype=np.float64)
    args = (
        flat.numpy(),
        gs,
        noise.k1,
        noise.k2,
        noise_table(noise.kind, torch.float32, flat.device).numpy(),
        _group_offsets(gs),
        gout.numpy(),
        sums.numpy(),
        wide,
    )
    span, items = _parts(flat.numel(), gs)
    kernels.run_split(_backward_kernel, items, 4, span, *args)
    if not narrow:
        sums = torch.from_numpy(wide).to(torch.float32)
    return gout.view(grad.shape), sums


if kernels.numba is not None:
    _jit = kernels.jit
    _M0, _M1 = np.uint64(_MULTIPLIERS[0]), np.uint64(_MULTIPLIERS[1])
    _M32 = np.uint64(_MASK32)

    @_jit(nogil=True)
    def _mix32_scalar(x):  # type: ignore[no-untyped-def]
        x = x ^ (x >> np.uint64(16))
        x = (x * _M0) & _M32
        x = x ^ (x >> np.uint64(15))
        x = (x * _M1) & _M32
        return x ^ (x >> np.uint64(16))

    @_jit(nogil=True)
    def _sample(i, k1, k2, table):  # type: ignore[no-untyped-def]
        x = _mix32_scalar((np.uint64(i >> 1) & _M32) ^ np.uint64(k1))
        x = _mix32_scalar((x + np.uint64(k2)) & _M32)
        half = x & np.uint64(0xFFFF) if i & 1 else x >> np.uint64(16)
        return table[np.int64(half)]

    @_jit(nogil=True)
    def _row(gs, r):  # type: ignore[no-untyped-def]
        return r if gs < 16 else min(gs - r, 16)

    @_jit(nogil=True)
    def _next_step(g, r, q, rem, gs):  # type: ignore[no-untyped-def]
        """Group and position in it of the next step's first lane (16 entries on)."""
        g += q
        r += rem
        if r >= gs:
            return g + 1, r - gs
        return g, r

    @_jit(nogil=True)
    def _forward_kernel(span, w, amp, offs, gs, k1, k2, table, out, first, last):  # type: ignore[no-untyped-def]
        n = w.size
        nvec = n - n % 16
        groups = amp.size
        q, rem = 16 // gs, 16 % gs
        for item in range(first, last):
            i = item * span
            g, r = i // gs, 0
            end = min(i + span, nvec)
            while i < end:
                simd.noise_forward16(w, i, amp, groups, offs, _row(gs, r), g, k1, k2, table, out)
                i += 16
                g, r = _next_step(g, r, q, rem, gs)
        if last * span >= nvec:  # the part holding the end does the tail
            for i in range(nvec, n):
                out[i] = simd.fma32(_sample(i, k1, k2, table), amp[i // gs], w[i])

    @_jit(nogil=True)
    def _backward_kernel(span, grad, gs, k1, k2, table, offs, gout, sums, wide, first, last):  # type: ignore[no-untyped-def]
        """Group sums go to ``sums`` (float32) for group sizes 1, 2, 4 and 8, else to
        ``wide`` (float64, accumulated)."""
        n = grad.size
        nvec = n - n % 16
        q, rem = 16 // gs, 16 % gs
        part = np.zeros(16, dtype=np.float32)
        for item in range(first, last):
            i = item * span
            g, r = i // gs, 0
            end = min(i + span, nvec)
            while i < end:
                if gs == 1:
                    simd.noise_backward16_1(grad, i, k1, k2, table, gout, sums, g)
                elif gs == 2:
                    simd.noise_backward16_2(grad, i, k1, k2, table, gout, sums, g)
                elif gs == 4:
                    simd.noise_backward16_4(grad, i, k1, k2, table, gout, sums, g)
                elif gs == 8:
                    simd.noise_backward16_8(grad, i, k1, k2, table, gout, sums, g)
                elif gs % 16 == 0:
                    wide[g] += simd.noise_backward16_16(grad, i, k1, k2, table, gout, part, 0)
                else:
                    simd.noise_backward16_1(grad, i, k1, k2, table, gout, part, 0)
                    row = _row(gs, r) * 16
                    for lane in range(16):
                        wide[g + offs[row + lane]] += part[lane]
                i += 16
                g, r = _next_step(g, r, q, rem, gs)
        if last * span >= nvec:
            for i in range(nvec, n):
                gout[i] = grad[i]
                if gs in (1, 2, 4, 8):
                    sums[i // gs] += grad[i] * _sample(i, k1, k2, table)
                else:
                    wide[i // gs] += grad[i] * _sample(i, k1, k2, table)
