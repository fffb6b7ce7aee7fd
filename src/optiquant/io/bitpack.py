"""Exact, vectorised bit packing of integer codes.

Every code of a ``bits``-wide stream is split into slices whose widths are powers
of two (8, 4, 2 and 1, from the least significant bit up: 7 bits = 4 + 2 + 1,
15 bits = 8 + 4 + 2 + 1, 16 bits = 8 + 8). Each slice is written as its own dense
byte stream (``8 // width`` codes per byte, first code in the lowest bits), and
the streams follow each other in that order. A stream of ``n`` codes therefore
takes ``sum(ceil(n * w / 8))`` bytes, at most three bytes more than
``ceil(n * bits / 8)``, and packing and unpacking only use whole-tensor byte
operations (no per-element Python loop), on whatever device the codes live.

Grouped streams (one width per group of consecutive codes, as DiffQ learns) are
stored bucket by bucket: the groups of width 1 first (in their original order),
then the groups of width 2, and so on, each bucket packed as above. The widths
themselves are stored by the caller (they are needed to unpack).
"""

from __future__ import annotations

import numpy as np
import torch

from optiquant.io.errors import FormatError

__all__ = [
    "MAX_BITS",
    "bits_needed",
    "grouped_nbytes",
    "pack_bits",
    "pack_groups",
    "packed_nbytes",
    "unpack_bits",
    "unpack_groups",
]

#: The widest code (in bits) the packer handles.
MAX_BITS = 16

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_OUT_DTYPES = {torch.uint8: 8, torch.int16: 15, torch.int32: 31, torch.int64: 63}


def _check_bits(bits: object, name: str = "bits", *, allow_zero: bool = False) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        # Accept integral floats and 0-d integer tensors, nothing fractional.
        if isinstance(bits, torch.Tensor) and bits.numel() == 1 and not bits.is_floating_point():
            bits = int(bits.item())
        elif isinstance(bits, float) and bits.is_integer():
            bits = int(bits)
        else:
            raise TypeError(f"{name} must be an integer, got {bits!r}")
    low = 0 if allow_zero else 1
    if not low <= bits <= MAX_BITS:
        raise ValueError(f"{name} must be in [{low}, {MAX_BITS}], got {bits}")
    return bits


def _slices(bits: int) -> list[tuple[int, int]]:
    """(offset, width) of the power-of-two slices of a ``bits``-wide code."""
    out = []
    offset = 0
    for width in (8, 8, 4, 2, 1):
        if bits - offset >= width:
            out.append((offset, width))
            offset += width
    return out


def packed_nbytes(numel: int, bits: int) -> int:
    """Number of bytes :func:`pack_bits` produces for ``numel`` codes of ``bits`` bits.

    >>> packed_nbytes(10, 4), packed_nbytes(8, 3), packed_nbytes(1000, 15)
    (5, 3, 1875)
    """
    bits = _check_bits(bits, allow_zero=True)
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    return sum(-(-numel * width // 8) for _, width in _slices(bits))


def bits_needed(max_code: int) -> int:
    """Smallest width (in bits, at least 1) able to hold the codes ``0..max_code``.

    >>> bits_needed(0), bits_needed(1), bits_needed(255), bits_needed(256)
    (1, 1, 8, 9)
    """
    if max_code < 0:
        raise ValueError(f"max_code must be >= 0, got {max_code}")
    return max(1, int(max_code).bit_length())


def _check_codes(codes: torch.Tensor, bits: int, check: bool) -> torch.Tensor:
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype == torch.bool:
        codes = codes.to(torch.uint8)
    if codes.dtype not in _INT_DTYPES:
        raise TypeError(f"codes must have an integer dtype, got {codes.dtype}")
    codes = codes.reshape(-1)
    if check and codes.numel() > 0:
        low, high = torch.aminmax(codes)
        low_i, high_i = int(low), int(high)
        if low_i < 0 or high_i >= (1 << bits):
            raise ValueError(
                f"codes must lie in [0, {(1 << bits) - 1}] for bits={bits}, "
                f"got values in [{low_i}, {high_i}]"
            )
    return codes


# Word type holding ``8 // width`` one-byte fields, and the shift/mask steps that gather
# them into one byte (pack): a few whole-tensor integer operations per slice. Unpacking
# spreads each byte into its word through a 256-entry table (one lookup per byte).
_WORDS = {4: torch.int16, 2: torch.int32, 1: torch.int64}
_GATHER = {4: (4,), 2: (6, 12), 1: (7, 14, 28)}


def _pack_slice(field: torch.Tensor, width: int) -> torch.Tensor:
    """Pack uint8 values < 2**width (width in 1, 2, 4, 8) densely into bytes."""
    if width == 8:
        return field
    per_byte = 8 // width
    n = field.numel()
    pad = (-n) % per_byte
    if pad or field.storage_offset() % per_byte or not field.is_contiguous():
        field = torch.cat([field.reshape(-1), field.new_zeros(pad)])
    words = field.view(_WORDS[width])
    acc = words | (words >> _GATHER[width][0])
    for shift in _GATHER[width][1:]:
        acc |= acc >> shift
    return acc.to(torch.uint8)


_SPREAD_TABLES: dict[tuple[int, torch.device], torch.Tensor] = {}


def _spread_table(width: int, device: torch.device) -> torch.Tensor:
    """For every byte value, the word whose bytes are its ``8 // width`` fields of
    ``width`` bits (first field in the first byte)."""
    key = (width, device)
    table = _SPREAD_TABLES.get(key)
    if table is None:
        per = 8 // width
        byte = torch.arange(256, dtype=torch.int64).unsqueeze(1)
        fields = (byte >> (torch.arange(per) * width)) & ((1 << width) - 1)
        words = (fields << (8 * torch.arange(per))).sum(1)
        table = _SPREAD_TABLES[key] = words.to(_WORDS[width]).to(device)
    return table


def _unpack_slice(data: torch.Tensor, width: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`_pack_slice`: ``numel`` uint8 values (one table lookup per byte)."""
    if width == 8:
        return data
    words = _spread_table(width, data.device).index_select(0, data.to(torch.int32))
    return words.view(torch.uint8)[:numel]


def pack_bits(codes: torch.Tensor, bits: int, *, check: bool = True) -> torch.Tensor:
    """Pack non-negative integer ``codes`` (each below ``2**bits``) into a uint8 tensor.

    The result is 1-D, on the device of ``codes``, of length
    :func:`packed_nbytes` ``(codes.numel(), bits)``; :func:`unpack_bits` inverts it
    exactly for every ``bits`` in 1..16. With ``check=False`` the range of the
    codes is trusted (values outside it are silently truncated).

    >>> import torch
    >>> codes = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 5])
    >>> packed = pack_bits(codes, 3)
    >>> packed.dtype, packed.numel()
    (torch.uint8, 5)
    >>> unpack_bits(packed, 3, 9).tolist()
    [0, 1, 2, 3, 4, 5, 6, 7, 5]
    """
    bits = _check_bits(bits)
    codes = _check_codes(codes, bits, check)
    n = codes.numel()
    if n == 0:
        return torch.empty(0, dtype=torch.uint8, device=codes.device)
    if bits <= 8:
        low = codes if codes.dtype == torch.uint8 else codes.to(torch.uint8)
        high = None
    else:
        # Split once into the low byte and the remaining high bits, both as bytes.
        low = (codes & 0xFF).to(torch.uint8)
        high = (codes >> 8).to(torch.uint8)
    parts = []
    for offset, width in _slices(bits):
        work, shift = (low, offset) if offset < 8 else (high, offset - 8)
        assert work is not None
        if shift == 0 and width == 8:
            field = work
        elif shift == 0 and width == bits:
            field = work
        else:
            field = (work >> shift) & ((1 << width) - 1)
        parts.append(_pack_slice(field, width))
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts)


def _out_dtype(dtype: torch.dtype, bits: int) -> torch.dtype:
    if dtype not in _OUT_DTYPES:
        raise TypeError(f"dtype must be one of uint8, int16, int32, int64, got {dtype}")
    if bits > _OUT_DTYPES[dtype]:
        raise ValueError(f"dtype {dtype} cannot hold {bits}-bit codes")
    return dtype


def unpack_bits(
    packed: torch.Tensor, bits: int, numel: int, *, dtype: torch.dtype = torch.int32
) -> torch.Tensor:
    """Recover ``numel`` codes of ``bits`` bits from the output of :func:`pack_bits`.

    Returns a 1-D tensor of ``dtype`` (int32 by default; uint8, int16 and int64 are
    accepted when wide enough) on the device of ``packed``. Raises ``ValueError``
    when ``packed`` does not have the exact length such a stream has.

    >>> import torch
    >>> codes = torch.arange(1000) % 32768
    >>> torch.equal(unpack_bits(pack_bits(codes, 15), 15, 1000).long(), codes)
    True
    """
    bits = _check_bits(bits)
    dtype = _out_dtype(dtype, bits)
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"packed must be a torch.Tensor, got {type(packed).__name__}")
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {packed.dtype}")
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel must be a non-negative int, got {numel!r}")
    packed = packed.reshape(-1)
    expected = packed_nbytes(numel, bits)
    if packed.numel() != expected:
        raise FormatError(
            f"packed stream has {packed.numel()} bytes, expected {expected} for "
            f"{numel} codes of {bits} bits (truncated or corrupted data?)"
        )
    if numel == 0:
        return torch.empty(0, dtype=dtype, device=packed.device)
    low: torch.Tensor | None = None
    high: torch.Tensor | None = None
    start = 0
    for offset, width in _slices(bits):
        size = -(-numel * width // 8)
        field = _unpack_slice(packed[start : start + size], width, numel)
        start += size
        if offset >= 8:
            field = field << (offset - 8) if offset > 8 else field
            high = field.clone() if high is None else high.bitwise_or_(field)
        else:
            field = field << offset if offset else field
            low = field.clone() if low is None else low.bitwise_or_(field)
    assert low is not None
    if high is None:
        return low.to(dtype) if dtype != torch.uint8 else low
    out = high.to(dtype) << 8
    out |= low
    return out if out.dtype == dtype else out.to(dtype)


def _check_widths(widths: torch.Tensor, groups: int) -> torch.Tensor:
    if not isinstance(widths, torch.Tensor):
        raise TypeError(f"widths must be a torch.Tensor, got {type(widths).__name__}")
    if widths.dtype not in _INT_DTYPES:
        raise TypeError(f"widths must have an integer dtype, got {widths.dtype}")
    widths = widths.reshape(-1)
    if widths.numel() != groups:
        raise ValueError(f"widths has {widths.numel()} entries, expected one per group ({groups})")
    if groups:
        low, high = (int(v) for v in torch.aminmax(widths))
        if low < 0 or high > MAX_BITS:
            raise ValueError(f"widths must lie in [0, {MAX_BITS}], got values in [{low}, {high}]")
    return widths


def _as_rows(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` (2-D, contiguous) viewed with as few, as wide elements per row as possible
    (1-D when a row fits one element: row gathers are then much faster). Rows of 16
    bytes are viewed as complex128, which index kernels move as one 16-byte unit (bit
    patterns are copied unchanged, NaN payloads included: tested)."""
    nbytes = rows.shape[1] * rows.element_size()
    offset = rows.storage_offset() * rows.element_size()
    for dtype, size in (
        (torch.complex128, 16),
        (torch.int64, 8),
        (torch.int32, 4),
        (torch.int16, 2),
    ):
        # Wide views only at addresses aligned for them (buffers from files may not be).
        if nbytes % size == 0 and offset % size == 0 and rows.data_ptr() % size == 0:
            wide = rows.view(torch.uint8).view(dtype)
            return wide.view(-1) if nbytes == size else wide
    return rows.view(-1) if rows.shape[1] == 1 else rows


def _as_rows_like(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``rows`` (2-D, contiguous, starting at an aligned address) viewed as ``like`` (an
    :func:`_as_rows` view of rows of the same byte length)."""
    wide = rows.view(torch.uint8).view(like.dtype)
    return wide.view(-1) if like.dim() == 1 else wide.view(rows.shape[0], -1)


def _buckets(
    widths: torch.Tensor, order: bool = True
) -> tuple[torch.Tensor | None, list[tuple[int, int]]]:
    """Stable order of the groups by width (if ``order``), and (width, count) per bucket."""
    small = widths if widths.dtype == torch.uint8 else widths.to(torch.uint8)
    if small.numel() == 0:
        return None, []
    low, high = (int(v) for v in torch.aminmax(small))
    if low == high:
        return None, [(low, small.numel())]
    counts = torch.bincount(small, minlength=MAX_BITS + 1).tolist()
    buckets = [(w, c) for w, c in enumerate(counts) if c]
    if not order:
        return None, buckets
    if small.device.type == "cpu":
        # numpy's stable sort of 8-bit keys is a radix sort: linear time.
        keys = small.contiguous().numpy()
        return torch.from_numpy(np.argsort(keys, kind="stable")), buckets
    return torch.sort(small, stable=True).indices, buckets


def _inverse(order: torch.Tensor) -> torch.Tensor:
    """The inverse permutation of ``order``: where each group sits in the bucket order.

    Gathering rows through it is much faster than scattering them through ``order``.
    """
    inverse = torch.empty_like(order)
    inverse.index_copy_(0, order, torch.arange(order.numel(), device=order.device))
    return inverse


def _check_group_size(group_size: int) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    return group_size


def grouped_nbytes(widths: torch.Tensor, group_size: int) -> int:
    """Number of bytes :func:`pack_groups` produces for these per-group ``widths``.

    >>> import torch
    >>> grouped_nbytes(torch.tensor([3, 8, 3]), 4)  # 8 codes of 3 bits + 4 codes of 8 bits
    7
    """
    group_size = _check_group_size(group_size)
    widths = _check_widths(widths, widths.numel())
    _, buckets = _buckets(widths, order=False)
    return sum(packed_nbytes(c * group_size, w) for w, c in buckets)


def pack_groups(
    codes: torch.Tensor, widths: torch.Tensor, group_size: int, *, check: bool = True
) -> torch.Tensor:
    """Pack ``codes`` whose consecutive groups of ``group_size`` have their own width.

    ``widths[g]`` (0..16) is the width in bits of the codes of group ``g``; a width of
    0 stores nothing (its codes must be 0). The output is a 1-D uint8 tensor of
    :func:`grouped_nbytes` ``(widths, group_size)`` bytes.

    >>> import torch
    >>> codes = torch.tensor([1, 0, 7, 5, 200, 3])
    >>> widths = torch.tensor([1, 3, 8])
    >>> packed = pack_groups(codes, widths, 2)
    >>> unpack_groups(packed, widths, 2).tolist()
    [1, 0, 7, 5, 200, 3]
    """
    group_size = _check_group_size(group_size)
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    n = codes.numel()
    if n % group_size:
        raise ValueError(f"codes has {n} entries, not a multiple of group_size={group_size}")
    groups = n // group_size
    widths = _check_widths(widths, groups)
    codes = _check_codes(codes, MAX_BITS, check=False)
    if check and n:
        limit = torch.ones((), dtype=torch.int64, device=codes.device) << widths.to(torch.int64)
        rows = codes.view(groups, group_size).amax(dim=1).to(torch.int64)
        if bool((codes.min() < 0).item()) or bool((rows >= limit).any().item()):
            raise ValueError("codes must lie in [0, 2**widths[g]) for every group g")
    if n == 0:
        return torch.empty(0, dtype=torch.uint8, device=codes.device)
    order, buckets = _buckets(widths)
    rows = codes.view(groups, group_size)
    if order is not None:
        wide = _as_rows(rows.contiguous())
        rows = wide.index_select(0, order.to(codes.device)).view(codes.dtype).view(groups, -1)
    parts = []
    start = 0
    for width, count in buckets:
        if width:
            parts.append(pack_bits(rows[start : start + count], width, check=False))
        start += count
    if not parts:
        return torch.empty(0, dtype=torch.uint8, device=codes.device)
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts)


def unpack_groups(
    packed: torch.Tensor,
    widths: torch.Tensor,
    group_size: int,
    *,
    dtype: torch.dtype = torch.int32,
) -> torch.Tensor:
    """Recover the codes packed by :func:`pack_groups` (a 1-D tensor of ``dtype``).

    Raises ``ValueError`` when ``packed`` does not have the exact expected length.

    >>> import torch
    >>> w = torch.tensor([16, 2])
    >>> unpack_groups(pack_groups(torch.tensor([65535, 3]), w, 1), w, 1).tolist()
    [65535, 3]
    """
    group_size = _check_group_size(group_size)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError("packed must be a uint8 torch.Tensor")
    widths = _check_widths(widths, widths.numel())
    groups = widths.numel()
    top = int(widths.max()) if groups else 1
    dtype = _out_dtype(dtype, max(top, 1))
    packed = packed.reshape(-1)
    expected = grouped_nbytes(widths, group_size)
    if packed.numel() != expected:
        raise FormatError(
            f"packed stream has {packed.numel()} bytes, expected {expected} for "
            f"{groups} groups of {group_size} codes (truncated or corrupted data?)"
        )
    device = packed.device
    if groups == 0:
        return torch.empty(0, dtype=dtype, device=device)
    order, buckets = _buckets(widths.to(device))
    if order is None:
        width, _ = buckets[0]
        if width == 0:
            return torch.zeros(groups * group_size, dtype=dtype, device=device)
        return unpack_bits(packed, width, groups * group_size, dtype=dtype)
    stream = torch.empty(groups * group_size, dtype=dtype, device=device)
    start = offset = 0
    for width, count in buckets:
        part = stream[offset : offset + count * group_size]
        offset += count * group_size
        if width == 0:
            part.zero_()
            continue
        size = packed_nbytes(count * group_size, width)
        part.copy_(
            unpack_bits(packed[start : start + size], width, count * group_size, dtype=dtype)
        )
        start += size
    out = torch.empty_like(stream)
    rows = _as_rows(stream.view(groups, group_size))
    torch.index_select(
        rows, 0, _inverse(order.to(device)), out=_as_rows(out.view(groups, group_size))
    )
    return out
