"""distquant's word packing: codes in int64 words, as many whole codes per word as fit.

A word holds ``64 // bits`` codes; the first code of the word sits in the
highest used bits and the last in the lowest (``word = ((c0 << b | c1) << b | ...)``).
The ``64 - (64 // bits) * bits`` top bits are zero, and the last word is
padded with zero codes. This is the layout ``distquant.quantize(packbits=True)``
produces, so packed tensors can be exchanged with it. For widths that divide 8
or equal 16 the packing runs on bytes (or 16-bit halves) with whole-tensor
operations; other widths use one shift per code slot, vectorised over words.
Nothing is modified in place. :func:`pack_bytes_into` is the in-place form for
CPU buffers that the chunked quantizers use.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

__all__ = ["codes_per_word", "pack_words", "unpack_words", "words_needed"]

_LITTLE = sys.byteorder == "little"


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    return bits


def codes_per_word(bits: int) -> int:
    """How many ``bits``-wide codes one int64 word holds.

    >>> codes_per_word(3), codes_per_word(4), codes_per_word(5)
    (21, 16, 12)
    """
    return 64 // _check_bits(bits)


def words_needed(numel: int, bits: int) -> int:
    """Number of int64 words for ``numel`` codes.

    >>> words_needed(100, 4)
    7
    """
    per = codes_per_word(bits)
    return -(-numel // per)


_WORD = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _byte_pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``8 // bits`` codes per byte, first code in the highest bits.

    The ``8 // bits`` code bytes are read as one little-endian integer and
    shifted into place together, so each step is a contiguous vectorised op.
    """
    per = 8 // bits
    c = codes.to(torch.uint8).reshape(-1)
    if per == 1:
        return c
    if not _LITTLE:
        m = c.reshape(-1, per)
        out = m[:, 0] << (bits * (per - 1))
        for j in range(1, per):
            out |= m[:, j] << (bits * (per - 1 - j))
        return out
    if c.storage_offset() % per:
        c = c.clone()
    v = c.view(_WORD[per])  # byte j of each group sits at bit 8 * j
    out = v << (bits * (per - 1))
    for j in range(1, per):
        shift = 8 * j - bits * (per - 1 - j)
        out |= v >> shift
    return out.to(torch.uint8)  # keeps the low byte


_NP_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _byte_multiplier(bits: int) -> int:
    """``M`` so that ``(v * M) mod 2**(8 p)``, ``v`` holding ``p = 8 // bits`` codes
    one per byte (code ``i`` at bit ``8 i``), has the packed byte (first code
    highest) in its top byte: code ``i`` lands at bit ``8 (p - 1) + bits (p - 1 - i)``
    from the term ``2**(8 (p - 1) + bits (p - 1 - i) - 8 i)``. The other products
    fall below bit ``8 (p - 1)`` without carries, or overflow away.
    """
    p = 8 // bits
    return sum(1 << (8 * (p - 1) + bits * (p - 1 - i) - 8 * i) for i in range(p))


def pack_bytes_into(codes: np.ndarray, bits: int, out: np.ndarray) -> None:
    """Pack uint8 ``codes`` (whole words, zero padded) into ``out``, the words' bytes.

    For ``bits`` in 1, 2, 4, 8 on a little-endian host. ``codes`` holds
    ``len(out) * 8 // bits`` codes and is overwritten. The ``8 // bits`` codes
    of a byte are read as one unsigned integer and one multiplication gathers
    them, in order, into its top byte; a byte swap of each 64-bit word then
    puts the first code in the highest bits.

    >>> out = np.empty(8, dtype=np.uint8)
    >>> c = np.zeros(16, dtype=np.uint8); c[:3] = [1, 2, 3]
    >>> pack_bytes_into(c, 4, out)
    >>> hex(int(out.view(np.int64)[0]))
    '0x1230000000000000'
    """
    per_byte = 8 // bits
    if per_byte == 1:
        if not np.may_share_memory(codes, out):  # else they are the same bytes
            np.copyto(out, codes)
    else:
        v = codes.view(_NP_UINT[per_byte])
        np.multiply(v, v.dtype.type(_byte_multiplier(bits)), out=v)
        np.right_shift(v, 8 * (per_byte - 1), out=v)
        np.copyto(out, v, casting="unsafe")  # the low byte of each
    out.view(np.uint64).byteswap(inplace=True)


def _group_weights(bits: int) -> tuple[torch.Tensor, list[int]]:
    """(per, groups) float32 weights and shifts so that word = sum_q group_q << shift_q."""
    per = 64 // bits
    g = max(1, 24 // bits)  # codes per group: at most 24 bits, exact in float32
    ends = [*range(g, per, g), per]
    weights = torch.zeros(per, len(ends), dtype=torch.float32)
    shifts = []
    begin = 0
    for q, end in enumerate(ends):
        for i in range(begin, end):
            weights[i, q] = float(2 ** (bits * (end - 1 - i)))
        shifts.append(bits * (per - end))
        begin = end
    return weights.t().contiguous(), shifts


_GROUPS: dict[int, tuple[torch.Tensor, list[int]]] = {}


def pack_float_into(codes: np.ndarray, bits: int, out: np.ndarray) -> None:
    """Pack float32 ``codes`` (integral values, whole words) into the int64 ``out``.

    For any ``bits`` up to 24: groups of at most 24 bits are formed by one
    matrix product (exact, all partial sums are integers below ``2**24``),
    then shifted into each word. ``codes`` holds ``len(out) * (64 // bits)``
    values.

    >>> out = np.empty(1, dtype=np.int64)
    >>> c = np.zeros(21, dtype=np.float32); c[:3] = [5, 0, 7]
    >>> pack_float_into(c, 3, out)
    >>> hex(int(out[0]))
    '0x51c0000000000000'
    """
    if bits not in _GROUPS:
        _GROUPS[bits] = _group_weights(bits)
    weights, shifts = _GROUPS[bits]
    per = 64 // bits
    n = out.size
    groups = torch.mm(weights, torch.from_numpy(codes).view(n, per).t())  # (groups, n)
    words = torch.from_numpy(out)
    words.copy_(groups[0]).bitwise_left_shift_(shifts[0])
    for q in range(1, len(shifts)):
        part = groups[q].to(torch.int64)
        if shifts[q]:
            part.bitwise_left_shift_(shifts[q])
        words.bitwise_or_(part)


def pack_words(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integer ``codes`` (any shape) into int64 words.

    >>> w = pack_words(torch.tensor([1, 2, 3]), 4)
    >>> hex(int(w[0]))
    '0x1230000000000000'
    """
    bits = _check_bits(bits)
    flat = codes.reshape(-1)
    per = 64 // bits
    nwords = -(-flat.numel() // per)
    pad = nwords * per - flat.numel()
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=flat.dtype, device=flat.device)])
    if nwords == 0:
        return torch.zeros(0, dtype=torch.int64, device=codes.device)
    if _LITTLE and bits in (1, 2, 4, 8):
        by = _byte_pack(flat, bits).view(nwords, 8).flip(1).contiguous()
        return by.view(torch.int64).reshape(-1)
    if _LITTLE and bits == 16:
        half = flat.to(torch.int32).to(torch.int16).view(nwords, 4).flip(1).contiguous()
        return half.view(torch.int64).reshape(-1)
    c = flat.to(torch.int64).view(nwords, per)
    out = c[:, 0].clone()
    for j in range(1, per):
        out <<= bits
        out |= c[:, j]
    return out


def unpack_words(words: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_words`: the first ``numel`` codes, flat.

    Codes come back as uint8 for ``bits <= 8`` and int32 otherwise. ``words``
    is not modified.

    >>> unpack_words(pack_words(torch.tensor([5, 0, 7, 1]), 3), 3, 4).tolist()
    [5, 0, 7, 1]
    """
    bits = _check_bits(bits)
    if words.dtype != torch.int64:
        raise TypeError(f"packed codes must be int64 words, got {words.dtype}")
    per = 64 // bits
    w = words.reshape(-1)
    if numel < 0 or numel > w.numel() * per:
        raise ValueError(
            f"cannot unpack {numel} codes of {bits} bits from {w.numel()} words "
            f"(at most {w.numel() * per})"
        )
    nwords = -(-numel // per)
    w = w[:nwords]
    out_dtype = torch.uint8 if bits <= 8 else torch.int32
    if nwords == 0:
        return torch.zeros(0, dtype=out_dtype, device=words.device)
    if _LITTLE and bits in (1, 2, 4, 8):
        by = w.contiguous().view(torch.uint8).view(nwords, 8).flip(1).reshape(-1)
        k = 8 // bits
        if k == 1:
            codes = by
        else:
            mask = (1 << bits) - 1
            shifts = torch.arange(k - 1, -1, -1, device=w.device, dtype=torch.uint8) * bits
            codes = ((by.unsqueeze(1) >> shifts) & mask).reshape(-1)
        return codes[:numel]
    if _LITTLE and bits == 16:
        half = w.contiguous().view(torch.int16).view(nwords, 4).flip(1).reshape(-1)
        return (half.to(torch.int32) & 0xFFFF)[:numel]
    mask = (1 << bits) - 1
    cols = [(w >> (bits * (per - 1 - j))) & mask for j in range(per)]
    codes = torch.stack(cols, dim=1).reshape(-1)[:numel]
    return codes.to(out_dtype)
