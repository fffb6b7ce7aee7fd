"""Exactness, sizes and errors of the bit packer."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optiquant.io import FormatError
from optiquant.io.bitpack import (
    MAX_BITS,
    bits_needed,
    grouped_nbytes,
    pack_bits,
    pack_groups,
    packed_nbytes,
    unpack_bits,
    unpack_groups,
)

ALL_BITS = list(range(1, MAX_BITS + 1))


def _codes(n: int, bits: int, seed: int = 0, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**bits, (n,), generator=gen).to(dtype)


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000, 4099])
def test_round_trip_every_width(bits: int, n: int) -> None:
    codes = _codes(n, bits, seed=bits * 7919 + n)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == packed_nbytes(n, bits)
    out = unpack_bits(packed, bits, n)
    assert out.dtype == torch.int32
    assert torch.equal(out.long(), codes)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_extreme_codes(bits: int) -> None:
    top = 2**bits - 1
    codes = torch.tensor([0, top, top, 0, top, 1 % (top + 1), top // 2] * 5)
    assert torch.equal(unpack_bits(pack_bits(codes, bits), bits, codes.numel()).long(), codes)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_size_is_dense(bits: int) -> None:
    # At most 3 bytes above the information-theoretic ceil(n * bits / 8).
    for n in (1, 13, 1000, 12345):
        exact = math.ceil(n * bits / 8)
        assert exact <= packed_nbytes(n, bits) <= exact + 3


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_input_and_output_dtypes(dtype: torch.dtype) -> None:
    bits = 7
    codes = _codes(333, bits)
    packed = pack_bits(codes.to(dtype), bits)
    assert torch.equal(packed, pack_bits(codes, bits))
    assert torch.equal(unpack_bits(packed, bits, 333, dtype=dtype).long(), codes)


def test_bool_codes() -> None:
    codes = torch.tensor([True, False, True, True, False, False, False, True, True])
    assert unpack_bits(pack_bits(codes, 1), 1, 9).tolist() == codes.long().tolist()


def test_shape_is_flattened() -> None:
    codes = _codes(60, 5).view(3, 4, 5)
    assert torch.equal(unpack_bits(pack_bits(codes, 5), 5, 60).long(), codes.view(-1))


def test_layout_is_documented_lsb_first() -> None:
    # 4-bit codes: two per byte, the first one in the low nibble.
    assert pack_bits(torch.tensor([1, 2, 3]), 4).tolist() == [0x21, 0x03]
    # 3 bits = 2 + 1: a 2-bit stream then a 1-bit stream.
    assert pack_bits(torch.tensor([5, 6]), 3).tolist() == [0b1001, 0b11]


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, MAX_BITS),
    values=st.lists(st.integers(0, 2**MAX_BITS - 1), min_size=0, max_size=80),
)
def test_round_trip_property(bits: int, values: list[int]) -> None:
    codes = torch.tensor([v % (2**bits) for v in values], dtype=torch.int64)
    packed = pack_bits(codes, bits)
    assert torch.equal(unpack_bits(packed, bits, len(values), dtype=torch.int64), codes)


@pytest.mark.parametrize("bits", [0, 17, -1])
def test_bits_out_of_range(bits: int) -> None:
    with pytest.raises(ValueError, match="bits"):
        pack_bits(torch.zeros(3, dtype=torch.int64), bits)
    with pytest.raises(ValueError, match="bits"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), bits, 3)


def test_fractional_bits_rejected() -> None:
    with pytest.raises(TypeError, match="bits"):
        pack_bits(torch.zeros(3, dtype=torch.int64), 3.5)  # type: ignore[arg-type]


def test_codes_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 7\]"):
        pack_bits(torch.tensor([0, 8]), 3)
    with pytest.raises(ValueError, match="codes must lie"):
        pack_bits(torch.tensor([-1, 2]), 3)


def test_float_codes_rejected() -> None:
    with pytest.raises(TypeError, match="integer dtype"):
        pack_bits(torch.tensor([0.0, 1.0]), 3)


def test_truncated_stream() -> None:
    packed = pack_bits(_codes(100, 5), 5)
    with pytest.raises(FormatError, match="expected 63"):
        unpack_bits(packed[:-1], 5, 100)
    with pytest.raises(TypeError, match="uint8"):
        unpack_bits(packed.to(torch.int16), 5, 100)


def test_output_dtype_too_narrow() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_bits(pack_bits(_codes(10, 9), 9), 9, 10, dtype=torch.uint8)


def test_bits_needed() -> None:
    for top in range(0, 70000, 997):
        width = bits_needed(top)
        assert top < 2**width and (width == 1 or top >= 2 ** (width - 1))


# ---- grouped streams -------------------------------------------------------------------------


def _grouped(groups: int, gs: int, seed: int, low: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    widths = torch.randint(low, MAX_BITS + 1, (groups,), generator=gen)
    limits = (2**widths).double().repeat_interleave(gs)
    codes = (torch.rand(groups * gs, generator=gen, dtype=torch.float64) * limits).long()
    return codes, widths


@pytest.mark.parametrize("gs", [1, 3, 8, 64])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_grouped_round_trip(gs: int, dtype: torch.dtype) -> None:
    codes, widths = _grouped(257, gs, seed=gs)
    packed = pack_groups(codes, widths.to(dtype), gs)
    assert packed.numel() == grouped_nbytes(widths, gs)
    assert torch.equal(unpack_groups(packed, widths.to(dtype), gs).long(), codes)


def test_grouped_size_is_dense() -> None:
    codes, widths = _grouped(1000, 8, seed=3, low=1)
    exact_bits = int((widths * 8).sum())
    distinct = int(widths.unique().numel())
    nbytes = pack_groups(codes, widths, 8).numel()
    assert exact_bits / 8 <= nbytes <= exact_bits / 8 + 4 * distinct


def test_grouped_uniform_width_equals_plain() -> None:
    codes = _codes(96, 6)
    widths = torch.full((12,), 6)
    assert torch.equal(pack_groups(codes, widths, 8), pack_bits(codes, 6))


def test_grouped_errors() -> None:
    codes, widths = _grouped(10, 4, seed=1, low=1)
    with pytest.raises(ValueError, match="multiple of group_size"):
        pack_groups(codes[:-1], widths, 4)
    with pytest.raises(ValueError, match="one per group"):
        pack_groups(codes, widths[:-1], 4)
    with pytest.raises(ValueError, match="widths must lie"):
        pack_groups(codes, widths + 17, 4)
    bad = codes.clone()
    bad[0] = 2 ** int(widths[0])
    with pytest.raises(ValueError, match="2\\*\\*widths"):
        pack_groups(bad, widths, 4)
    with pytest.raises(ValueError, match="group_size"):
        pack_groups(codes, widths, 0)
    packed = pack_groups(codes, widths, 4)
    with pytest.raises(FormatError, match="truncated"):
        unpack_groups(packed[1:], widths, 4)


def test_grouped_empty() -> None:
    empty = torch.empty(0, dtype=torch.int64)
    assert pack_groups(empty, empty, 4).numel() == 0
    assert unpack_groups(torch.empty(0, dtype=torch.uint8), empty, 4).numel() == 0
