"""Compiled CPU loops for encoding values into packed words and decoding them back.

Quantizing a tensor against a codebook and packing the codes, or unpacking and
looking the codes up again, are single elementwise passes over the data. With
numba installed (the ``fast`` extra) each runs as one fused loop over
cache-sized blocks, spread over torch's thread count; without it the
torch/numpy paths of :mod:`optiquant.quant.distributional` do the same work in
several passes. Both give bit-identical results (the tests compare them), so a
file written with the kernels reads the same without them.

The model quantizers (:mod:`optiquant.quant.codecs`) use the same machinery:
:func:`affine_codes` and :func:`lsq_codes` turn weights into codes,
:func:`pack_stream` packs 1/2/4/8-bit codes, :func:`decode_stream` and
:func:`decode_grouped` decode packed states, and :func:`fingerprint` checks
whether a cached state still matches its weights.

Set the environment variable ``OPTIQUANT_KERNELS=0`` (read at each call) or use
:func:`disabled` to force the fallback paths.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from optiquant.quant import simd

try:  # optional: the ``fast`` extra
    import numba
except ImportError:  # pragma: no cover - depends on the installation
    numba = None  # type: ignore[assignment]

__all__ = [
    "affine_codes",
    "available",
    "decode_grouped",
    "decode_stream",
    "decode_words",
    "disabled",
    "encode",
    "extremes",
    "fingerprint",
    "lsq_codes",
    "pack_stream",
    "plain_stores",
    "streams",
    "vectorized",
    "warm_up",
]

MIN_NUMEL = 1 << 16
"""Tensors smaller than this use the fallback paths (nothing to gain from the kernels)."""

_BLOCK = 2048  # values per block: the block's scratch arrays stay in the L1/L2 cache
_MAX_WORKERS = 8
_MIN_ITEMS = 16  # blocks or word groups a worker gets at least
_MIN_GROUPS = 8192  # groups of codes a worker gets at least
_GROUP_BLOCK = 1024  # groups ranked, then decoded, at a time (a multiple of 16)
MAX_WIDTH = 16  # the widest code of a grouped stream
_local = threading.local()


def available() -> bool:
    """Whether the compiled kernels are installed and switched on.

    >>> isinstance(available(), bool)
    True
    """
    if numba is None or getattr(_local, "off", False):
        return False
    return os.environ.get("OPTIQUANT_KERNELS", "1").strip().lower() not in ("0", "false", "no")


def vectorized(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the kernels run as AVX-512 vector code for values of ``dtype`` here.

    True for float32 on CPUs with AVX-512F (see :mod:`optiquant.quant.simd`);
    other cases use the scalar compiled loops.

    >>> isinstance(vectorized(), bool)
    True
    """
    return available() and simd.supported() and dtype == torch.float32


STREAM_BYTES = 1 << 20
"""Outputs of at least this many bytes are written with streaming stores (see :func:`streams`)."""


def streams(out: np.ndarray) -> bool:
    """Whether a vector kernel writes ``out`` with streaming stores.

    Streaming stores skip reading each cache line before overwriting it, which
    nearly triples the write rate to memory already in use, but leave nothing in
    the cache: they pay off for outputs larger than the caches close to the core
    (:data:`STREAM_BYTES`), and need a 64-byte aligned start. Into freshly
    allocated memory (first touched by the store) they are slower than plain
    stores, so callers that allocate the output write it under
    :func:`plain_stores`.

    >>> streams(np.empty(16, dtype=np.float32))
    False
    """
    if getattr(_local, "plain", False):
        return False
    return out.nbytes >= STREAM_BYTES and out.ctypes.data % 64 == 0


@contextmanager
def plain_stores() -> Iterator[None]:
    """Within the block (in this thread), the kernels write with plain stores only
    (for outputs just allocated; see :func:`streams`).

    >>> with plain_stores():
    ...     streams(np.empty(1 << 20, dtype=np.float32))
    False
    """
    with _thread_flag("plain"):
        yield


@contextmanager
def stores_for(reused: bool) -> Iterator[None]:
    """Within the block, streaming stores only where the output's memory was written
    before (``reused``, see :class:`optiquant.quant.memory.Output`); plain stores into
    new memory, where streaming stores are slower (:func:`streams`).

    >>> with stores_for(False):
    ...     streams(np.empty(1 << 20, dtype=np.float32))
    False
    """
    if reused:
        yield
        return
    with plain_stores():
        yield


@contextmanager
def disabled() -> Iterator[None]:
    """Within the block (in this thread), use the fallback paths instead of the kernels.

    >>> with disabled():
    ...     available()
    False
    """
    with _thread_flag("off"):
        yield


@contextmanager
def _thread_flag(name: str) -> Iterator[None]:
    """Set this thread's flag ``name`` within the block (restored after it)."""
    before = getattr(_local, name, False)
    setattr(_local, name, True)
    try:
        yield
    finally:
        setattr(_local, name, before)


def _require_numba() -> None:
    if numba is None:
        raise RuntimeError("the compiled kernels need numba (pip install 'optiquant[fast]')")


def _block(per: int) -> int:
    """Values per encoding block: whole words, about ``_BLOCK`` values."""
    return per * max(1, _BLOCK // per)


def _simd_block(per: int) -> int:
    """Values per vector encoding block: whole words and whole 16-lane steps."""
    return per * 16 * max(1, _BLOCK // (per * 16))


def _run(kernel: Any, items: int, *args: Any) -> None:
    """``kernel(*args, first, last)`` over ``range(items)``, split over torch's thread count."""
    run_split(kernel, items, _MIN_ITEMS, *args)


def run_split(kernel: Any, items: int, min_items: int, *args: Any) -> None:
    """``kernel(*args, first, last)`` over ``range(items)``, split over torch's thread
    count into parts of at least ``min_items`` items.

    The kernels release the GIL, so plain Python threads run them in parallel
    (and numba's own thread pool, which would share torch's OpenMP settings,
    stays unused).
    """
    workers = max(1, min(torch.get_num_threads(), _MAX_WORKERS, items // min_items))
    if workers == 1:
        kernel(*args, 0, items)
        return
    cuts = [items * w // workers for w in range(workers + 1)]

    def part(w: int) -> None:
        kernel(*args, cuts[w], cuts[w + 1])

    futures = [_pool().submit(part, w) for w in range(workers)]
    for f in futures:
        f.result()


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    """The worker threads of :func:`run_split`, started once per process."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():  # a forked child starts its own
        _POOL = (os.getpid(), ThreadPoolExecutor(_MAX_WORKERS, thread_name_prefix="optiquant"))
    return _POOL[1]


def jit(**options: Any) -> Any:
    """``numba.njit`` with an on-disk cache where a cache location is writable (numba only)."""
    assert numba is not None

    def decorate(fn: Any) -> Any:
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # no writable cache location: compile in each process
            return numba.njit(**options)(fn)

    return decorate


if numba is not None:
    _block_jit = jit()(_block)
    _FASTMATH = {"nnan", "nsz"}  # no contraction or reassociation: the same roundings

    @jit(nogil=True, fastmath=_FASTMATH)
    def _grid_unit(xv, a, b, top):  # type: ignore[no-untyped-def]
        """``x * a + b`` (two roundings) clamped to ``[0, top]``."""
        v = xv * a
        v = v + b
        v = max(v, top * 0)
        return min(v, top)

    @jit(nogil=True)
    def _close_block(code, m, per, pack, out, i0):  # type: ignore[no-untyped-def]
        """Unpacked: write the block's ``m`` codes to ``out[i0:]`` and return -1.
        Packed: zero the codes after them up to a whole word; return the word count."""
        if not pack:
            for i in range(m):
                out[i0 + i] = code[i]
            return -1
        nw = (m + per - 1) // per
        for i in range(m, nw * per):
            code[i] = 0
        return nw

    @jit(nogil=True, fastmath=_FASTMATH)
    def _encode_kernel(x, a, b, top, table, bits, pack, out, first, last):  # type: ignore[no-untyped-def]
        n = x.size
        per = 64 // bits if pack else 1
        blk = _block_jit(per)
        shift = np.uint64(bits)
        u = np.empty(blk, dtype=table.dtype)
        cell = np.empty(blk, dtype=np.int32)
        code = np.zeros(blk, dtype=np.uint32)
        for bi in range(first, last):
            i0 = bi * blk
            m = min(blk, n - i0)
            for i in range(m):  # grid units, two roundings, clamped
                v = _grid_unit(x[i0 + i], a, b, top)
                u[i] = v
                cell[i] = np.int32(v)
            for i in range(m):  # one lookup and a truncated sum give the code
                code[i] = np.uint32(table[cell[i]] + u[i])
            nw = _close_block(code, m, per, pack, out, i0)
            if nw < 0:
                continue
            w0 = i0 // per
            for w in range(nw):  # first code in the highest bits
                acc = np.uint64(0)
                for j in range(per):
                    acc = (acc << shift) | np.uint64(code[w * per + j])
                out[w0 + w] = np.int64(acc)

    @jit(nogil=True)
    def _decode_kernel(words, table, lut, bits, unit, group, numel, rows, vals, first, last):  # type: ignore[no-untyped-def]
        per = 64 // bits
        span = group * per  # codes per group of words: a whole number of lookups
        lookups = span // unit
        ngroups = numel // span
        step = bits * unit
        umask = (np.uint64(1) << np.uint64(step)) - np.uint64(1)
        for g in range(first, last):
            r = g * lookups
            carry = np.uint64(0)
            pending = 0  # codes of the current lookup taken from the previous word
            for k in range(group):
                wd = np.uint64(words[g * group + k])
                pos = 0
                if pending:
                    need = unit - pending
                    nmask = (np.uint64(1) << np.uint64(bits * need)) - np.uint64(1)
                    hi = (wd >> np.uint64(bits * (per - need))) & nmask
                    rows[r] = table[np.int64((carry << np.uint64(bits * need)) | hi)]
                    r += 1
                    pos = need
                sh = bits * (per - pos)
                while pos + unit <= per:  # lookups wholly inside this word
                    sh -= step
                    rows[r] = table[np.int64((wd >> np.uint64(sh)) & umask)]
                    r += 1
                    pos += unit
                pending = per - pos
                if pending:
                    pmask = (np.uint64(1) << np.uint64(bits * pending)) - np.uint64(1)
                    carry = wd & pmask
        if last == ngroups:  # the codes after the last whole group
            _decode_tail_kernel(words, lut, bits, ngroups * span, numel, vals)

    @jit(nogil=True)
    def _fingerprint_kernel(v):  # type: ignore[no-untyped-def]
        total = np.uint64(0)
        weighted = np.uint64(0)
        for i in range(v.size):
            x = np.uint64(np.int64(v[i]))  # sign-extended, as torch widens to int64
            total += x
            weighted += x * np.uint64(i)
        return total, weighted

    @jit(nogil=True)
    def _fingerprint_simd_kernel(v):  # type: ignore[no-untyped-def]
        """:func:`_fingerprint_kernel` for int64 ``v``, by rows of 16 lanes: with ``m``
        rows, lane ``l``'s values ``x_r`` (position ``16 r + l``) have the sum ``a_l``
        and ``sum_r r x_r = m a_l - b_l``, ``b_l`` the sum of the running sums."""
        rows = v.size // 16
        sums = np.zeros(32, dtype=np.uint64)
        simd.fingerprint_scan(v, rows, sums)
        total = np.uint64(0)
        weighted = np.uint64(0)
        m = np.uint64(rows)
        for lane in range(16):
            a = sums[lane]
            total += a
            weighted += np.uint64(16) * (m * a - sums[16 + lane]) + np.uint64(lane) * a
        for i in range(16 * rows, v.size):
            x = np.uint64(v[i])
            total += x
            weighted += x * np.uint64(i)
        return total, weighted

    @jit(nogil=True)
    def _grouped_unit(data, w, rank, geo, step, base, out, o):  # type: ignore[no-untyped-def]
        """``out[o:o+8]``: the eight codes of the unit of rank ``rank`` in width ``w``'s
        streams, one slice at a time (scalar bit deposits; any position in ``data``)."""
        size = data.size
        low = np.uint64(0)
        hi = np.uint64(0)
        for k in range(4):
            c = geo[0, w, k] + rank * geo[1, w, k]
            if c + 8 <= size:
                raw = simd.load_le64(data, c)
            else:  # the last bytes of the stream
                raw = np.uint64(0)
                for b in range(max(size - c, 0)):
                    raw |= np.uint64(data[c + b]) << np.uint64(8 * b)
            f = simd.pdep64(raw, np.uint64(geo[2, w, k])) << np.uint64(geo[3, w, k])
            high = np.uint64(geo[4, w, k])
            hi |= f & high
            low |= f & ~high
        simd.store8_affine(low, hi, step, base, out, o)

    @jit(nogil=True)
    def _grouped_groups(  # type: ignore[no-untyped-def]
        data, widths, sub, geo, tabs, lim, steps, base, vector, stream, out, obase, gfirst, glast
    ):
        """Decode groups ``gfirst`` to ``glast - 1`` of a bucketed grouped stream (see
        :func:`decode_grouped`); group ``g``'s values go to ``out[g * 8 * sub - obase:]``.

        By blocks of ``_GROUP_BLOCK`` groups: a scalar pass ranks each unit of 8 codes
        in its width's streams, then (``vector``) ``simd.grouped8`` decodes the units
        eight at a time, where every read stays inside ``data`` (rank below ``lim``)."""
        steps16 = steps[1:]
        count = np.zeros(geo.shape[1], dtype=np.int64)
        for g in range(gfirst):  # each width's rank at group ``gfirst``
            count[widths[g]] += 1
        rank = np.empty(_GROUP_BLOCK, dtype=np.int64)
        units = _GROUP_BLOCK * sub if sub > 1 else 0  # per-unit copies, for sub > 1
        uw = np.empty(units, dtype=np.uint8)
        ur = np.empty(units, dtype=np.int64)
        for g0 in range(gfirst, glast, _GROUP_BLOCK):
            n = min(g0 + _GROUP_BLOCK, glast) - g0
            outside = 0
            for i in range(n):
                w = widths[g0 + i]
                r = count[w]
                count[w] = r + 1
                outside |= (r + 1) * sub > lim[w]
                rank[i] = r
            o = g0 * 8 * sub - obase
            nvec = n * sub - n * sub % 8 if vector and not outside else 0
            if sub == 1:
                for b in range(0, nvec, 8):
                    simd.grouped8(
                        data, tabs, widths, g0 + b, rank, b, steps16, base, out, o + 8 * b, stream
                    )
            elif nvec:
                for i in range(n):
                    for j in range(sub):
                        uw[i * sub + j] = widths[g0 + i]
                        ur[i * sub + j] = rank[i] * sub + j
                for b in range(0, nvec, 8):
                    simd.grouped8(data, tabs, uw, b, ur, b, steps16, base, out, o + 8 * b, stream)
            for v in range(nvec, n * sub):
                w = widths[g0 + v // sub]
                r = rank[v // sub] * sub + v % sub
                _grouped_unit(data, w, r, geo, steps[w], base, out, o + 8 * v)
        if stream:
            simd.store_fence()

    @jit(nogil=True)
    def _grouped_kernel(  # type: ignore[no-untyped-def]
        data, widths, sub, geo, tabs, lim, steps, base, vector, stream, out, first, last
    ):
        """:func:`_grouped_groups` over blocks ``first`` to ``last - 1`` of whole groups."""
        full = out.size // (8 * sub)
        g0, g1 = first * _GROUP_BLOCK, min(last * _GROUP_BLOCK, full)
        _grouped_groups(
            data, widths, sub, geo, tabs, lim, steps, base, vector, stream, out, 0, g0, g1
        )

    def _make_pack_grouped(itemsize: int) -> Any:
        # the masks picking the low and the second byte of each code in a 64-bit word
        pick = {1: 0xFFFFFFFFFFFFFFFF, 2: 0x00FF00FF00FF00FF, 4: 0x000000FF000000FF}[itemsize]
        per_word = 8 // itemsize

        @jit(nogil=True)
        def pack_grouped_kernel(codes, widths, sub, geo, out):  # type: ignore[no-untyped-def]
            """Write every group's units into the grouped stream ``out`` (``codes``: the
            bytes of the codes, ``itemsize`` each), in order: each unit rewrites the 8
            bytes from its own on (``out`` has 8 bytes to spare at its end), so one
            thread writes the whole stream."""
            count = np.zeros(geo.shape[1], dtype=np.int64)  # each width's next rank
            for g in range(widths.size):
                w = widths[g]
                r = count[w]
                count[w] = r + 1
                for j in range(sub if w else 0):
                    at = (g * sub + j) * 8 * itemsize
                    low = np.uint64(0)
                    high = np.uint64(0)
                    for q in range(itemsize):
                        word = simd.load_le64(codes, at + 8 * q)
                        lanes = np.uint64(8 * per_word * q)
                        low |= simd.pext64(word, np.uint64(pick)) << lanes
                        if itemsize > 1:
                            high |= simd.pext64(word, np.uint64(pick << 8)) << lanes
                    rank = r * sub + j
                    for k in range(4):  # every slot, without branches (no slice: mask 0)
                        high_byte = np.uint64(geo[4, w, k])
                        plane = (high & high_byte) | (low & ~high_byte)
                        shifted = plane >> np.uint64(geo[3, w, k])
                        raw = simd.pext64(shifted, np.uint64(geo[2, w, k]))
                        # merge into 8 bytes: the ones after this unit's belong to a later
                        # unit of this stream (written next) or to another stream (kept)
                        pos = geo[0, w, k] + rank * geo[1, w, k]
                        keep = ~np.uint64(geo[5, w, k])
                        simd.store_le64(out, pos, (simd.load_le64(out, pos) & keep) | raw)

        return pack_grouped_kernel

    _PACK_GROUPED = {size: _make_pack_grouped(size) for size in (1, 2, 4)}

    @jit(nogil=True)
    def _width_counts(widths):  # type: ignore[no-untyped-def]
        """How many entries of the uint8 array ``widths`` hold each value 0..255."""
        parts = np.zeros((4, 256), dtype=np.int64)  # four tallies: no store-to-load chains
        for i in range(widths.size):
            parts[i & 3, widths[i]] += 1
        counts = np.zeros(256, dtype=np.int64)
        for v in range(256):
            counts[v] = parts[0, v] + parts[1, v] + parts[2, v] + parts[3, v]
        return counts

    @jit(nogil=True)
    def _grouped_layout(counts, codes_per_group, size):  # type: ignore[no-untyped-def]
        """``(geo, tabs, lim, total)`` for a grouped stream with ``counts[w]`` groups of
        width ``w``: per width and slice slot, ``geo`` holds the slice stream's start byte,
        its bytes per unit of 8 codes (0: no slice), deposit mask, shift in the byte,
        high-byte flag and the mask of one unit's bytes in a 64-bit word; ``tabs`` the
        tables of ``simd.grouped8``; ``lim`` per width the
        first unit rank whose 8-byte reads would pass the end of ``size`` bytes (0 for
        width 0, which the vector step cannot index); ``total`` the stream's length."""
        widths = counts.size
        geo = np.zeros((6, widths, 4), dtype=np.int64)
        tabs = np.zeros(192, dtype=np.int64)
        lim = np.full(widths, np.iinfo(np.int64).max, dtype=np.int64)
        lim[0] = 0
        total = 0
        for w in range(1, widths):
            for k in range(4):
                width = _SLICE_WIDTH[w, k]
                if counts[w] == 0 or width == 0:
                    continue
                geo[0, w, k] = total
                geo[1, w, k] = width
                geo[2, w, k] = _SLICE_MASK[w, k]
                geo[3, w, k] = _SLICE_SHIFT[w, k]
                geo[4, w, k] = _SLICE_HIGH[w, k]
                geo[5, w, k] = (1 << 8 * width) - 1 if width < 8 else -1
                tabs[48 * k + w - 1] = total | _SLICE_META[w, k]
                tabs[48 * k + 16 + w - 1] = _SLICE_CTRL[w, k]
                tabs[48 * k + 32 + w - 1] = _SLICE_FIELD[w, k]
                room = size - 8 - total
                lim[w] = min(lim[w], room // width + 1 if room >= 0 else 0)
                total += counts[w] * codes_per_group * width // 8
        return geo, tabs, lim, total

    @jit(nogil=True)
    def _affine_codes_kernel(x, lo, inv, group_size, out, first, last):  # type: ignore[no-untyped-def]
        """``out[i] = int((x[i] - lo) * inv[i // group_size] + 0.5)`` over blocks
        ``first`` to ``last - 1`` of ``_BLOCK`` groups."""
        n = x.size
        block = _BLOCK * group_size
        half = np.float32(0.5)
        for blk in range(first, last):
            start = blk * block
            # per-block views: indices from 0, which the compiler vectorizes
            xs = x[start : min(start + block, n)]
            codes = out[start : start + xs.size]
            if inv.size == 1:
                f = inv[0]
                for i in range(xs.size):
                    codes[i] = np.int32((xs[i] - lo) * f + half)
                continue
            g0 = start // group_size
            whole = xs.size // group_size
            if group_size == 8:  # a fixed inner trip count: one 8-lane step per group
                for g in range(whole):
                    f = inv[g0 + g]
                    for j in range(8):
                        codes[8 * g + j] = np.int32((xs[8 * g + j] - lo) * f + half)
            else:
                for g in range(whole):
                    f = inv[g0 + g]
                    for j in range(g * group_size, (g + 1) * group_size):
                        codes[j] = np.int32((xs[j] - lo) * f + half)
            if whole * group_size < xs.size:  # a partial last group
                f = inv[g0 + whole]
                for j in range(whole * group_size, xs.size):
                    codes[j] = np.int32((xs[j] - lo) * f + half)

    @jit(nogil=True)
    def _lsq_codes_kernel(x, scale, low, high, out, first, last):  # type: ignore[no-untyped-def]
        """``out[i] = round(clamp(x[i] / scale, low, high)) - low`` (half to even) over
        blocks ``first`` to ``last - 1`` of ``_BLOCK`` values."""
        n = x.size
        for blk in range(first, last):
            start = blk * _BLOCK
            xs = x[start : min(start + _BLOCK, n)]
            codes = out[start : start + xs.size]
            for i in range(xs.size):
                v = min(max(xs[i] / scale, low), high)
                codes[i] = np.int32(np.rint(v) - low)

    @jit(nogil=True)
    def _pack_stream_kernel(codes, bits, out, first, last):  # type: ignore[no-untyped-def]
        """``out[b] = OR_j codes[b * per + j] << (j * bits)``, ``per = 8 // bits``, for
        bytes in blocks ``first`` to ``last - 1`` of ``_BLOCK`` bytes (codes past the
        end count as 0)."""
        per = 8 // bits
        n = codes.size
        for blk in range(first, last):
            b0 = blk * _BLOCK
            dst = out[b0 : min(b0 + _BLOCK, out.size)]
            whole = min(dst.size, (n - b0 * per) // per)
            src = codes[b0 * per : b0 * per + whole * per]
            if bits == 4:  # fixed strides: vector code
                for b in range(whole):
                    dst[b] = src[2 * b] | (src[2 * b + 1] << 4)
            elif bits == 2:
                for b in range(whole):
                    dst[b] = (
                        src[4 * b]
                        | (src[4 * b + 1] << 2)
                        | (src[4 * b + 2] << 4)
                        | (src[4 * b + 3] << 6)
                    )
            elif bits == 1:
                for b in range(whole):
                    acc = np.uint8(0)
                    for j in range(8):
                        acc |= src[8 * b + j] << j
                    dst[b] = acc
            else:
                dst[:whole] = src
            if whole < dst.size:  # the last byte, partly filled
                acc = np.uint8(0)
                for j in range((b0 + whole) * per, n):
                    acc |= codes[j] << ((j - (b0 + whole) * per) * bits)
                dst[whole] = acc

    _simd_block_jit = jit()(_simd_block)

    @jit(nogil=True, fastmath=_FASTMATH)
    def _encode_simd_kernel(  # type: ignore[no-untyped-def]
        x, a, b, top, table, table_bits, mode, bits, pack, shift, out, first, last
    ):
        n = x.size
        per = 64 // bits if pack else 1
        blk = _simd_block_jit(per)
        code = np.zeros(blk + 16, dtype=np.int32)
        for bi in range(first, last):
            i0 = bi * blk
            m = min(blk, n - i0)
            mv = m - m % 16
            for i in range(0, mv, 16):
                if mode == simd.PERM16:
                    simd.encode16_perm16(x, i0 + i, a, b, top, table_bits, code, i)
                elif mode == simd.PERM32:
                    simd.encode16_perm32(x, i0 + i, a, b, top, table_bits, code, i)
                else:
                    simd.encode16_gather(x, i0 + i, a, b, top, table_bits, code, i)
            for i in range(mv, m):  # the scalar loop's arithmetic
                v = _grid_unit(x[i0 + i], a, b, top)
                code[i] = np.int32(table[np.int32(v)] + v)
            nw = _close_block(code, m, per, pack, out, i0)
            if nw < 0:
                continue
            w0 = i0 // per
            first_word = 0
            if bits == 8:  # two words of byte codes per step
                first_word = nw - nw % 2
                for w in range(0, first_word, 2):
                    simd.pack16_bytes(code, w * 8, out, w0 + w)
            for w in range(first_word, nw):
                acc = np.uint64(0)
                base = w * per
                for c in range(0, per, 16):
                    acc |= simd.pack16(code, base + c, min(16, per - c), shift, c)
                out[w0 + w] = np.int64(acc)

    @jit(nogil=True)
    def _decode_simd_kernel(  # type: ignore[no-untyped-def]
        words, table, mode, byte_codes, woff, shift, starts, span_words, mask, out, stream,
        first, last,
    ):  # fmt: skip
        steps = starts.size  # 16-lane steps per period of the word/lane pattern
        span = 16 * steps
        for q in range(first, last):
            w0 = q * span_words
            o0 = q * span
            for p in range(steps):
                w = w0 + starts[p]
                s = 16 * p
                o = o0 + s
                if byte_codes:
                    simd.decode16_bytes_gather(words, w, table, out, o, stream)
                elif mode == simd.PERM16:
                    simd.decode16_perm16(words, w, woff, shift, s, mask, table, out, o, stream)
                elif mode == simd.PERM32:
                    simd.decode16_perm32(words, w, woff, shift, s, mask, table, out, o, stream)
                else:
                    simd.decode16_gather(words, w, woff, shift, s, mask, table, out, o, stream)
        if stream:
            simd.store_fence()

    @jit(nogil=True)
    def _decode_tail_kernel(words, table, bits, start, numel, out):  # type: ignore[no-untyped-def]
        """``out[i] = table[code i]`` for codes ``start`` to ``numel - 1``, one at a time."""
        per = 64 // bits
        cmask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
        for i in range(start, numel):
            w = i // per
            c = (np.uint64(words[w]) >> np.uint64(bits * (per - 1 - (i - w * per)))) & cmask
            out[i] = table[np.int64(c)]

    @jit(nogil=True)
    def _decode_stream_kernel(data, bits, table, out, stream, first, last):  # type: ignore[no-untyped-def]
        """``out[i] = table[code i]`` for a low-bits-first stream of 1/2/4/8-bit codes,
        over blocks ``first`` to ``last - 1`` of 1024 values (the last may be short);
        ``stream``: streaming stores (``out`` 64-byte aligned)."""
        n = out.size
        nvec = n - n % 16
        for blk in range(first, last):
            start = blk * 1024
            stop = min(start + 1024, nvec)
            for o in range(start, stop, 16):
                b = o * bits // 8
                if bits == 1:
                    simd.decode16_stream_1(data, b, table, out, o, stream)
                elif bits == 2:
                    simd.decode16_stream_2(data, b, table, out, o, stream)
                elif bits == 4:
                    simd.decode16_stream_4(data, b, table, out, o, stream)
                else:
                    simd.decode16_stream_8(data, b, table, out, o, stream)
            if start + 1024 >= n:  # the block holding the end does the tail
                mask = (1 << bits) - 1
                for i in range(nvec, n):
                    bit = i * bits
                    out[i] = table[(data[bit // 8] >> (bit % 8)) & mask]
        if stream:
            simd.store_fence()

    @jit(nogil=True)
    def _extremes_kernel(x):  # type: ignore[no-untyped-def]
        n = x.size
        steps = n // 16
        lows = np.empty(33, dtype=np.float32)
        highs = np.empty(32, dtype=np.float32)
        ipos = lows[16:32].view(np.int32)
        for lane in range(16):
            lows[lane] = x[lane]
            highs[lane] = x[lane]
            ipos[lane] = lane
        highs[16:32].view(np.int32)[:] = ipos
        lows[32] = 0.0
        simd.extremes_scan(x, steps, lows, highs)
        lo_pos, hi_pos = lows[16:32].view(np.int32), highs[16:32].view(np.int32)
        imin, imax = lo_pos[0], hi_pos[0]
        for lane in range(1, 16):  # smallest position among equal extremes
            a, b = x[lo_pos[lane]], x[imin]
            if a < b or (a == b and lo_pos[lane] < imin):
                imin = lo_pos[lane]
            a, b = x[hi_pos[lane]], x[imax]
            if a > b or (a == b and hi_pos[lane] < imax):
                imax = hi_pos[lane]
        for i in range(16 * steps, n):
            if x[i] < x[imin]:
                imin = i
            if x[i] > x[imax]:
                imax = i
            if x[i] != x[i]:
                lows[32] = 1.0
        return imin, imax, lows[32] != 0.0


def extremes(values: np.ndarray) -> tuple[int, int] | None:
    """Positions of the first minimum and first maximum of 1-D float32 ``values`` (at
    least 16 entries), in one vector pass; None if ``values`` holds a NaN (torch's
    reductions then decide) or the vector kernels are off.

    >>> x = np.arange(20, dtype=np.float32) % 7
    >>> extremes(x) in (None, (0, 6))
    True
    """
    if not vectorized(torch.float32) or values.dtype != np.float32 or values.size < 16:
        return None
    if values.size >= 2**31:
        return None
    imin, imax, nan = _extremes_kernel(values)
    return None if nan else (int(imin), int(imax))


def decode_stream(data: np.ndarray, bits: int, table: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = table[code i]`` for the ``out.size`` codes of a low-bits-first byte
    stream (:func:`optiquant.io.pack_bits`'s layout) of 1, 2, 4 or 8 bits, float32,
    with the vector steps (:func:`vectorized` must hold).

    >>> out = np.empty(16, dtype=np.float32)
    >>> table = np.array([0.0, 10.0, 20.0, 30.0], dtype=np.float32)
    >>> data = np.full(4, 0b11100100, dtype=np.uint8)  # codes 0, 1, 2, 3 per byte
    >>> if vectorized():
    ...     decode_stream(data, 2, table, out)
    ... else:
    ...     out[:] = np.tile(table, 4)
    >>> out[:4].tolist()
    [0.0, 10.0, 20.0, 30.0]
    """
    if not vectorized(torch.float32) or bits not in (1, 2, 4, 8):
        raise ValueError(
            f"decode_stream needs the vector kernels and bits in 1, 2, 4, 8, got {bits}"
        )
    if data.dtype != np.uint8 or data.size * 8 < out.size * bits:
        raise ValueError(f"data must hold {out.size} codes of {bits} bits as uint8 bytes")
    if out.dtype != np.float32 or table.dtype != np.float32 or table.size != 1 << bits:
        raise ValueError("out and table must be float32, the table with 2**bits entries")
    padded = _padded(table) if bits < 8 else table
    stream = streams(out)
    _run(_decode_stream_kernel, -(-out.size // 1024), data, bits, padded, out, stream)


def encode(
    x: np.ndarray, a: float, b: float, top: float, table: np.ndarray, bits: int, out: np.ndarray
) -> None:
    """Codes of ``x`` on an encoder's grid, packed into ``out`` (int64 words) or not.

    ``x`` is a 1-D float32/float64 array, ``table`` the encoder's one-lookup
    table of the same dtype (:meth:`optiquant.quant.codebook.Encoder.sum_table`),
    ``a``/``b`` the affine map to grid units and ``top`` the last cell. With an
    int64 ``out`` of ``ceil(n / (64 // bits))`` words the codes are packed as
    :func:`optiquant.quant.wordpack.pack_words` packs them; otherwise ``out``
    (uint8/int32, ``n`` entries) receives the codes.

    >>> import numpy as np
    >>> if available():
    ...     out = np.empty(3, dtype=np.uint8)
    ...     table = np.array([0.0, 0.0, 0.0], dtype=np.float32)  # code = cell
    ...     encode(np.array([0.2, 1.5, 9.0], np.float32), 1.0, 0.0, 2.0, table, 2, out)
    ...     print(out.tolist())
    ... else:
    ...     print([0, 1, 2])
    [0, 1, 2]
    """
    _require_numba()
    if x.ndim != 1 or x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be a 1-D float32/float64 array, got {x.dtype} with {x.ndim} dims")
    if table.dtype != x.dtype:
        raise TypeError(f"table must have the same dtype as x ({x.dtype}), got {table.dtype}")
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    pack = out.dtype == np.int64
    need = -(-x.size // (64 // bits)) if pack else x.size
    if out.ndim != 1 or out.size != need:
        raise ValueError(f"out must hold {need} entries, got {out.size}")
    npd = x.dtype.type
    per = 64 // bits if pack else 1
    if simd.supported() and x.dtype == np.float32 and bits <= 16:
        padded = _padded(table)
        shift = _shifts(bits, per) if pack else np.zeros(16, dtype=np.uint64)
        mode = simd.lookup_mode(table.size)
        nblocks = -(-x.size // _simd_block(per))
        bits_view = padded.view(np.int32)
        args = (x, npd(a), npd(b), npd(top), padded, bits_view, mode, bits, pack, shift, out)
        _run(_encode_simd_kernel, nblocks, *args)
        return
    nblocks = -(-x.size // _block(per))
    _run(_encode_kernel, nblocks, x, npd(a), npd(b), npd(top), table, bits, pack, out)


def _padded(table: np.ndarray) -> np.ndarray:
    """``table`` extended with its last entry to 32 entries or more (permutes read 32)."""
    out = np.empty(max(table.size, 32), dtype=table.dtype)
    out[: table.size] = table
    out[table.size :] = table[-1]
    return out


def _shifts(bits: int, per: int) -> np.ndarray:
    """Shift of each code in a packed word (first code highest), zero-padded to 16-lane steps."""
    shift = np.zeros(-(-per // 16) * 16, dtype=np.uint64)
    shift[:per] = bits * (per - 1 - np.arange(per, dtype=np.uint64))
    return shift


def _decode_simd(
    words: np.ndarray, full: torch.Tensor, bits: int, numel: int, out32: np.ndarray
) -> None:
    """Vector decoding of 32-bit values: whole periods of the word/lane pattern, then a scalar tail.

    A period is the fewest 16-lane steps that end on a word boundary; each
    step reads the eight words from its first one (all of its codes lie in them).
    """
    per = 64 // bits
    g = math.gcd(per, 16)
    steps, span_words = per // g, 16 // g
    code = np.arange(16 * steps)
    starts = code[::16] // per
    woff = (code // per - np.repeat(starts, 16)).astype(np.int32)
    shift = (bits * (per - 1 - code % per)).astype(np.uint64)
    span = 16 * steps
    room = words.size - int(starts[-1]) - 8  # the last step of a period reads 8 words
    periods = max(0, min(numel // span, room // span_words + 1 if room >= 0 else 0))
    src = full.contiguous().view(torch.uint8).numpy().view(np.uint32)
    table = _padded(src)
    mode = simd.lookup_mode(src.size)
    mask = np.uint64((1 << bits) - 1)
    starts64 = starts.astype(np.int64)
    stream = streams(out32)
    args = (words, table, mode, bits == 8, woff, shift, starts64, span_words, mask, out32, stream)
    _run(_decode_simd_kernel, periods, *args)
    _decode_tail_kernel(words, table, bits, periods * span, numel, out32)


_ROW = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _layout(bits: int, itemsize: int) -> tuple[int, int]:
    """(codes per lookup, words per group) for packed ``bits``-wide codes.

    A lookup yields one machine word of values (8 bytes) when its index stays
    within 16 bits, otherwise one value; a group is the fewest whole words
    whose codes split into whole lookups.
    """
    unit = max(1, 8 // itemsize)
    while unit > 1 and unit * bits > 16:
        unit //= 2
    per = 64 // bits
    group = 1
    while (group * per) % unit:
        group += 1
    return unit, group


def decode_words(
    words: np.ndarray, lut: torch.Tensor, bits: int, numel: int, out: torch.Tensor
) -> bool:
    """Decode packed ``words`` into ``out`` (contiguous, CPU) with ``lut``; False if unsuitable.

    ``lut`` holds the value of each code (``out``'s dtype); codes past its end
    decode to its last entry. Each lookup takes as many consecutive codes as
    fill 8 bytes of output (two float32, four float16, or one value when the
    index would pass 16 bits) from a table of the values they stand for and
    writes them with one store. Returns False, writing nothing, when the
    kernels are off or ``out`` is not a suitable buffer.

    >>> import numpy as np
    >>> words = np.array([0x1230000000000000], dtype=np.int64)  # codes 1, 2, 3, 0, ...
    >>> out = torch.empty(3)
    >>> ok = decode_words(words, torch.tensor([0.0, 10.0, 20.0, 30.0]), 4, 3, out)
    >>> out.tolist() if ok else [10.0, 20.0, 30.0]
    [10.0, 20.0, 30.0]
    """
    if not available() or out.device.type != "cpu" or not out.is_contiguous():
        return False
    isz = out.element_size()
    vtype = _ROW.get(isz)
    if vtype is None or lut.dtype != out.dtype or out.numel() < numel or not 1 <= bits <= 32:
        return False
    unit, group = _layout(bits, isz)
    rtype = _ROW[unit * isz]
    if out.data_ptr() % (unit * isz):
        return False
    per = 64 // bits
    if words.size < -(-numel // per):
        raise ValueError(f"{words.size} words cannot hold {numel} codes of {bits} bits")
    mask = (1 << bits) - 1
    src = lut.detach().cpu()
    full = src[torch.arange(min(1 << bits, 1 << 16)).clamp(max=src.numel() - 1)]
    if simd.supported() and isz == 4 and bits <= 16:
        vals32 = out.reshape(-1)[:numel].view(torch.uint8).numpy().view(np.uint32)
        _decode_simd(np.ascontiguousarray(words, dtype=np.int64), full, bits, numel, vals32)
        return True
    if unit == 1:
        table = full
    else:
        idx = torch.arange(1 << (bits * unit))
        shifts = torch.arange(unit - 1, -1, -1) * bits
        table = full[(idx[:, None] >> shifts) & mask].contiguous()  # (rows, unit) values
    table_np = table.contiguous().view(torch.uint8).numpy().view(rtype).reshape(-1)
    lut_np = full.contiguous().view(torch.uint8).numpy().view(vtype)
    vals = out.reshape(-1)[:numel].view(torch.uint8).numpy().view(vtype)
    span = group * per
    n_rows = (numel // span) * span // unit
    rows = vals[: n_rows * unit].view(rtype)
    words_np = np.ascontiguousarray(words, dtype=np.int64)
    args = (words_np, table_np, lut_np, bits, unit, group, numel, rows, vals)
    _run(_decode_kernel, numel // span, *args)
    return True


# deposit masks spreading 8 fields of 8, 4, 2 or 1 bits into the 8 bytes of a word
_SPREAD = {
    8: 0xFFFFFFFFFFFFFFFF,
    4: 0x0F0F0F0F0F0F0F0F,
    2: 0x0303030303030303,
    1: 0x0101010101010101,
}


def _slice_constants() -> dict[str, np.ndarray]:
    """Per width ``w`` (0..16) and slice slot ``k`` (0..3) of :func:`optiquant.io.pack_groups`'s
    layout (int64): the slice's width (0: none), deposit mask, shift in its byte and
    high-byte flag (all ones or 0), and for ``simd.grouped8`` the per-width bits of its
    table entry (log2 of the width at bit 56, the high-byte flag at bit 62), the
    multishift controls and the field masks."""
    from optiquant.io.bitpack import _slices

    names = ("width", "mask", "shift", "high", "meta", "ctrl", "field")
    c = {k: np.zeros((MAX_WIDTH + 1, 4), dtype=np.int64) for k in names}

    def signed(value: int) -> int:
        return value - (1 << 64) if value >= 1 << 63 else value

    for w in range(1, MAX_WIDTH + 1):
        for k, (offset, width) in enumerate(_slices(w)):
            sh, high = offset % 8, offset >= 8
            c["width"][w, k] = width
            c["mask"][w, k] = signed(_SPREAD[width])
            c["shift"][w, k] = sh
            c["high"][w, k] = -1 if high else 0
            c["meta"][w, k] = (width.bit_length() - 1) << 56 | int(high) << 62
            c["ctrl"][w, k] = signed(sum(((j * width - sh) % 64) << (8 * j) for j in range(8)))
            c["field"][w, k] = signed((((1 << width) - 1) << sh) * 0x0101010101010101)
    return c


_SLICES = _slice_constants()
_SLICE_WIDTH, _SLICE_MASK, _SLICE_SHIFT, _SLICE_HIGH = (
    _SLICES[k] for k in ("width", "mask", "shift", "high")
)
_SLICE_META, _SLICE_CTRL, _SLICE_FIELD = (_SLICES[k] for k in ("meta", "ctrl", "field"))


def decode_grouped(
    data: np.ndarray,
    widths: np.ndarray,
    group_size: int,
    steps: np.ndarray,
    base: float,
    out: np.ndarray,
) -> None:
    """``out[i] = code_i * steps[w] + base`` for the codes of a grouped stream
    (:func:`optiquant.io.pack_groups`'s layout: groups bucketed by width, each
    bucket in power-of-two slices), group ``g`` having width ``w = widths[g]``.

    ``group_size`` must be a multiple of 8 (whole bytes per group and slice),
    ``out`` float32 with at most ``len(widths) * group_size`` entries (a partial
    last group), ``steps`` float32 with an entry per width (0..16). Needs the vector
    kernels (:func:`vectorized`).

    >>> from optiquant.io import pack_groups
    >>> codes, widths = torch.arange(16) % 4, torch.tensor([2, 3], dtype=torch.uint8)
    >>> out = np.empty(16, dtype=np.float32)
    >>> steps = np.ones(17, dtype=np.float32)
    >>> data = pack_groups(codes, widths, 8).numpy()
    >>> if vectorized():
    ...     decode_grouped(data, widths.numpy(), 8, steps, 0.5, out)
    ... else:
    ...     out[:] = codes.numpy() + 0.5
    >>> out[:6].tolist()
    [0.5, 1.5, 2.5, 3.5, 0.5, 1.5]
    """
    if not vectorized(torch.float32) or group_size % 8:
        raise ValueError(
            f"decode_grouped needs the vector kernels and a group_size multiple of 8, "
            f"got {group_size}"
        )
    groups = widths.size
    if widths.dtype != np.uint8 or data.dtype != np.uint8:
        raise ValueError("data and widths must be uint8 arrays")
    if out.dtype != np.float32 or steps.dtype != np.float32 or steps.size != MAX_WIDTH + 1:
        raise ValueError(f"out and steps must be float32, steps with {MAX_WIDTH + 1} entries")
    if not (groups - 1) * group_size < out.size <= groups * group_size:
        raise ValueError(f"out has {out.size} entries, not what {groups} groups hold")
    counts = _checked_width_counts(widths)
    geo, tabs, lim, total = _grouped_layout(counts, group_size, data.size)
    if total != data.size:
        raise ValueError(f"data has {data.size} bytes, the widths need {total}")
    sub = group_size // 8
    vector = simd.byte_steps_supported()
    full = out.size // group_size
    args = (data, widths, sub, geo, tabs, lim, steps, np.float32(base), vector)
    blocks = -(-full // _GROUP_BLOCK)
    run_split(_grouped_kernel, blocks, _MIN_GROUPS // _GROUP_BLOCK, *args, streams(out), out)
    if full < groups:  # a partial last group, decoded aside
        last = np.empty(group_size, dtype=np.float32)
        _grouped_groups(*args, False, last, full * group_size, full, groups)
        out[full * group_size :] = last[: out.size - full * group_size]


def _checked_width_counts(widths: np.ndarray) -> np.ndarray:
    """Groups per width 0..16 of uint8 ``widths``; raises if a width exceeds 16."""
    counts = _width_counts(widths)
    if counts[MAX_WIDTH + 1 :].any():
        raise ValueError(f"widths exceed {MAX_WIDTH} bits")
    return counts[: MAX_WIDTH + 1]


def pack_grouped(codes: np.ndarray, widths: np.ndarray, group_size: int) -> np.ndarray:
    """:func:`optiquant.io.pack_groups`'s stream (bytes) for ``codes`` (uint8, int16 or
    int32, ``len(widths) * group_size`` of them) with ``widths[g]`` bits (0..16) for
    group ``g``, ``group_size`` a multiple of 8. Bits above a group's width are dropped.
    Needs the vector kernels (:func:`vectorized`; the bit gathers are BMI2 instructions).

    >>> codes = np.array([1, 0, 3, 2, 1, 0, 3, 2] * 2, dtype=np.uint8)
    >>> widths = np.array([2, 1], dtype=np.uint8)
    >>> if vectorized():
    ...     print(pack_grouped(codes, widths, 8).tolist())
    ... else:
    ...     print([85, 177, 177])
    [85, 177, 177]
    """
    if not vectorized(torch.float32):
        raise ValueError("pack_grouped needs the vector kernels (numba and an AVX-512 CPU)")
    if group_size <= 0 or group_size % 8:
        raise ValueError(f"group_size must be a positive multiple of 8, got {group_size}")
    if codes.dtype not in (np.uint8, np.int16, np.int32) or codes.ndim != 1:
        raise ValueError(f"codes must be a 1-D uint8, int16 or int32 array, got {codes.dtype}")
    if widths.dtype != np.uint8 or codes.size != widths.size * group_size:
        raise ValueError(f"widths must be uint8, one per group of {group_size} codes")
    counts = _checked_width_counts(widths)
    geo, _, _, total = _grouped_layout(counts, group_size, 0)
    out = np.zeros(total + 8, dtype=np.uint8)
    raw = np.ascontiguousarray(codes).view(np.uint8)
    _PACK_GROUPED[codes.itemsize](raw, widths, group_size // 8, geo, out)
    return out[:total]


def _check_codes_out(x: np.ndarray, out: np.ndarray) -> None:
    if x.ndim != 1 or x.dtype != np.float32:
        raise ValueError(f"x must be a 1-D float32 array, got {x.ndim}-D {x.dtype}")
    if out.shape != x.shape or out.dtype not in (np.uint8, np.int16, np.int32):
        raise ValueError(f"out must be a uint8/int16/int32 array of {x.size} entries")


def affine_codes(
    x: np.ndarray, lo: float, inv: np.ndarray, group_size: int, out: np.ndarray
) -> None:
    """``out[i] = floor((x[i] - lo) * inv[i // group_size] + 0.5)``, each step rounded
    to float32 (torch's element-wise steps: the same codes). ``inv`` is float32 with
    one entry, or one per group; codes are assumed to fit ``out``'s dtype.

    >>> out = np.empty(3, dtype=np.uint8)
    >>> x = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    >>> if available():
    ...     affine_codes(x, 0.0, np.array([3.0], np.float32), 1, out)
    ... else:
    ...     out[:] = [0, 2, 3]
    >>> out.tolist()
    [0, 2, 3]
    """
    _require_numba()
    _check_codes_out(x, out)
    groups = -(-x.size // group_size)
    if inv.dtype != np.float32 or inv.size not in (1, groups):
        raise ValueError(f"inv must be float32 with 1 or {groups} entries")
    blocks = -(-x.size // (_BLOCK * group_size))
    _run(_affine_codes_kernel, blocks, x, np.float32(lo), inv, group_size, out)


def pack_stream(codes: np.ndarray, bits: int, out: np.ndarray) -> None:
    """Pack uint8 ``codes`` below ``2**bits`` (``bits`` in 1, 2, 4, 8) into the
    low-bits-first bytes ``out`` of :func:`optiquant.io.pack_bits` (the last byte
    padded with zero bits).

    >>> out = np.empty(2, dtype=np.uint8)
    >>> if available():
    ...     pack_stream(np.array([1, 2, 3], dtype=np.uint8), 4, out)
    ... else:
    ...     out[:] = [0x21, 0x03]
    >>> [hex(b) for b in out]
    ['0x21', '0x3']
    """
    _require_numba()
    if bits not in (1, 2, 4, 8) or codes.dtype != np.uint8 or codes.ndim != 1:
        raise ValueError(f"pack_stream needs 1-D uint8 codes and bits in 1, 2, 4, 8, got {bits}")
    if out.dtype != np.uint8 or out.size != -(-codes.size * bits // 8):
        raise ValueError(f"out must be {-(-codes.size * bits // 8)} uint8 bytes")
    _run(_pack_stream_kernel, -(-out.size // _BLOCK), codes, bits, out)


def lsq_codes(x: np.ndarray, scale: float, low: int, high: int, out: np.ndarray) -> None:
    """``out[i] = round(clamp(x[i] / scale, low, high)) - low`` in float32 steps, ties to
    even (torch's ``div``, ``clamp``, ``round``: the same codes).

    >>> out = np.empty(4, dtype=np.uint8)
    >>> x = np.array([-1.0, 0.1, 0.4, 9.0], dtype=np.float32)
    >>> if available():
    ...     lsq_codes(x, 0.25, -4, 3, out)
    ... else:
    ...     out[:] = [0, 4, 6, 7]
    >>> out.tolist()
    [0, 4, 6, 7]
    """
    _require_numba()
    _check_codes_out(x, out)
    blocks = -(-x.size // _BLOCK)
    _run(_lsq_codes_kernel, blocks, x, np.float32(scale), np.float32(low), np.float32(high), out)


def fingerprint(values: np.ndarray) -> tuple[int, int]:
    """``(sum v_i, sum i * v_i)`` of a 1-D integer array, wrapping modulo ``2**64``.

    Returned as signed 64-bit integers, the values the same sums give in torch's int64.

    >>> if available():
    ...     print(fingerprint(np.array([3, -1, 2], dtype=np.int32)))
    ... else:
    ...     print((4, 3))
    (4, 3)
    """
    _require_numba()
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise TypeError(f"values must be a 1-D integer array, got {values.dtype}, {values.ndim}-D")
    if values.dtype == np.int64 and simd.supported():
        total, weighted = _fingerprint_simd_kernel(values)
    else:
        total, weighted = _fingerprint_kernel(values)
    return int(np.uint64(total).view(np.int64)), int(np.uint64(weighted).view(np.int64))


def warm_up() -> None:
    """Compile (or load from numba's cache) the float32 kernels now rather than at first use.

    >>> warm_up()  # does nothing without numba
    """
    if numba is None:
        return
    x = np.zeros(64, dtype=np.float32)
    encode(x, 1.0, 0.0, 1.0, np.zeros(2, dtype=np.float32), 4, np.empty(4, np.int64))
    decode_words(np.zeros(4, np.int64), torch.zeros(16), 4, 64, torch.empty(64))
