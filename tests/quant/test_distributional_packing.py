"""distquant's int64 word packing: exact round trips and the documented bit layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optiquant.quant.wordpack import (
    codes_per_word,
    pack_bytes_into,
    pack_float_into,
    pack_words,
    unpack_words,
    words_needed,
)


@pytest.mark.parametrize("bits", list(range(1, 17)))
@pytest.mark.parametrize("numel", [0, 1, 63, 64, 65, 1001])
def test_round_trip_is_exact(bits: int, numel: int) -> None:
    g = torch.Generator().manual_seed(bits * 1000 + numel)
    codes = torch.randint(0, 2**bits, (numel,), generator=g)
    words = pack_words(codes, bits)
    assert words.dtype == torch.int64 and words.numel() == words_needed(numel, bits)
    before = words.clone()
    out = unpack_words(words, bits, numel)
    assert torch.equal(out.long(), codes)
    assert torch.equal(words, before)  # never modified in place


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 16])
def test_layout_first_code_in_highest_used_bits(bits: int) -> None:
    per = codes_per_word(bits)
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (per + 3,), generator=g)
    words = pack_words(codes, bits)
    expect = [0, 0]
    for i, c in enumerate(codes.tolist()):
        w, j = divmod(i, per)
        expect[w] |= c << (bits * (per - 1 - j))
    # compare as unsigned 64-bit numbers
    assert [int(v) & (2**64 - 1) for v in words.tolist()] == expect


def test_wasted_bits_match_distquant() -> None:
    # whole codes per word only: 3 bits -> 21 codes (63 bits), 5 -> 12, 6 -> 10
    assert [codes_per_word(b) for b in (3, 5, 6, 7)] == [21, 12, 10, 9]


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="bits"):
        pack_words(torch.zeros(3, dtype=torch.long), 0)
    with pytest.raises(TypeError, match="int64"):
        unpack_words(torch.zeros(3, dtype=torch.int32), 4, 3)
    with pytest.raises(ValueError, match="cannot unpack"):
        unpack_words(torch.zeros(1, dtype=torch.int64), 4, 17)


def test_matches_distquant_packing_when_installed() -> None:
    distquant = pytest.importorskip("distquant", reason="distquant is an optional peer")
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    for k in (3, 4):
        q, _ = distquant.quantize(x, k=k, dist="gaussian", beta=1.0, packbits=True)
        raw, _ = distquant.quantize(x, k=k, dist="gaussian", beta=1.0, packbits=False)
        assert torch.equal(pack_words(raw.reshape(-1), k), q)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_in_place_byte_packing_matches_pack_words(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    full = torch.full((64,), 2**bits - 1)
    for codes in (torch.randint(0, 2**bits, (64 * 37,), generator=g), full):
        out = np.empty(codes.numel() * bits // 8, dtype=np.uint8)
        pack_bytes_into(codes.to(torch.uint8).numpy().copy(), bits, out)
        assert torch.equal(torch.from_numpy(out.view(np.int64)), pack_words(codes, bits))


@pytest.mark.parametrize("bits", [3, 5, 6, 7, 9, 12, 16])
def test_float_packing_matches_pack_words(bits: int) -> None:
    per = codes_per_word(bits)
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (per * 301,), generator=g)
    codes[:per] = 2**bits - 1  # all bits set in the first word
    out = np.empty(301, dtype=np.int64)
    pack_float_into(codes.to(torch.float32).numpy(), bits, out)
    assert torch.equal(torch.from_numpy(out), pack_words(codes, bits))
