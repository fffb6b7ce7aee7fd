"""The compiled encode/decode loops give exactly what the torch/numpy paths give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optiquant.quant import kernels, simd
from optiquant.quant.codebook import Encoder
from optiquant.quant.distributional import dequantize, dist_codebook, quantize
from optiquant.quant.wordpack import pack_words

pytest.importorskip("numba", reason="the compiled kernels need numba (the 'fast' extra)")


def _randn(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _both(fn):  # type: ignore[no-untyped-def]
    """``fn()`` with the kernels and with the fallback paths."""
    assert kernels.available()
    with_kernels = fn()
    with kernels.disabled():
        assert not kernels.available()
        without = fn()
    return with_kernels, without


# Sizes that end inside a packed word and inside a group of words.
@pytest.mark.parametrize("k", list(range(1, 17)))
@pytest.mark.parametrize("packbits", [True, False])
def test_quantize_and_dequantize_equal_the_fallback(k: int, packbits: bool) -> None:
    x = _randn(300_007, seed=k) * 1.7 - 0.4
    x[:3] = torch.tensor([90.0, -90.0, 0.0])  # clamped at both ends of the grid
    (q, info), (q0, _) = _both(lambda: quantize(x, k=k, beta=1.2, packbits=packbits))
    assert q.dtype == q0.dtype and torch.equal(q, q0)
    y, y0 = _both(lambda: dequantize(q, **info))
    assert torch.equal(y, y0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 3, 4, 7, 8, 12])
def test_other_dtypes_equal_the_fallback(dtype: torch.dtype, k: int) -> None:
    x = _randn(200_003, seed=100 + k, dtype=torch.float64).to(dtype)
    (q, info), (q0, _) = _both(lambda: quantize(x, k=k, beta=1.0))
    assert torch.equal(q, q0)
    y, y0 = _both(lambda: dequantize(q, **info))
    assert y.dtype == dtype and torch.equal(y, y0)


@pytest.mark.parametrize("bits", [2, 3, 5, 7, 9, 16])
def test_codes_past_the_codebook_decode_to_its_last_value(bits: int) -> None:
    n_pts = (1 << bits) - 3  # codes n_pts .. 2**bits - 1 are not valid points
    codes = torch.randint(0, 1 << bits, (100_003,), generator=torch.Generator().manual_seed(bits))
    words = pack_words(codes, bits).numpy()
    lut = torch.linspace(-1.0, 1.0, n_pts)
    out = torch.empty(codes.numel())
    assert kernels.decode_words(words, lut, bits, codes.numel(), out)
    expected = lut[codes.clamp(max=n_pts - 1)]
    assert torch.equal(out, expected)


needs_simd = pytest.mark.skipif(not simd.supported(), reason="the vector steps need AVX-512F")


def _table_encoder(k: int) -> tuple[Encoder, float, float, np.ndarray]:
    _, th = dist_codebook("gaussian", 1 << k, 1.0)
    enc = Encoder(th)
    a, b = enc.affine(0.1, 1.3)
    table = enc.sum_table(torch.float32)
    assert table is not None
    return enc, a, b, table.numpy()


@needs_simd
@pytest.mark.parametrize("k", list(range(1, 17)))
def test_vector_steps_equal_the_scalar_kernels(k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # lengths that end inside a 16-lane step, a packed word and a pattern period
    x = _randn(70_001 + 13 * k, seed=200 + k) * 1.5
    x[:4] = torch.tensor([1e4, -1e4, 0.0, -0.0])
    enc, a, b, table = _table_encoder(k)
    per = 64 // k
    codes = torch.randint(0, 1 << k, (x.numel(),), generator=torch.Generator().manual_seed(k))
    words = pack_words(codes, k).numpy()
    lut = torch.linspace(-3.0, 2.0, 1 << k)

    def run() -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        packed = np.empty(-(-x.numel() // per), dtype=np.int64)
        kernels.encode(x.numpy(), a, b, enc.cells - 1, table, k, packed)
        loose = np.empty(x.numel(), dtype=np.int32)
        kernels.encode(x.numpy(), a, b, enc.cells - 1, table, k, loose)
        decoded = torch.empty(x.numel())
        assert kernels.decode_words(words, lut, k, x.numel(), decoded)
        return packed, loose, decoded

    packed, loose, decoded = run()
    monkeypatch.setattr(simd, "_SUPPORTED", False)
    assert not kernels.vectorized()
    packed0, loose0, decoded0 = run()
    assert np.array_equal(packed, packed0) and np.array_equal(loose, loose0)
    assert torch.equal(decoded, decoded0) and torch.equal(decoded, lut[codes])
    assert torch.equal(torch.from_numpy(loose0).long(), enc.encode(x, a, b, normalized=True).long())


@needs_simd
def test_every_lookup_variant_is_exercised() -> None:
    cells = {k: _table_encoder(k)[0].cells for k in range(1, 17)}
    modes = {simd.lookup_mode(c) for c in cells.values()}
    modes |= {simd.lookup_mode(1 << k) for k in range(1, 17)}
    assert modes == {simd.PERM16, simd.PERM32, simd.GATHER}


def test_two_threads_give_the_same_result_and_keep_torch_threads() -> None:
    x = _randn(1_000_003, seed=7)
    _, th = dist_codebook("gaussian", 16, 1.0)
    enc = Encoder(th)
    a, b = enc.affine(0.0, 1.0)
    table = enc.sum_table(torch.float32)
    assert table is not None
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)  # conftest restores the setting
        out = np.empty(-(-x.numel() // 16), dtype=np.int64)
        kernels.encode(x.numpy(), a, b, enc.cells - 1, table.numpy(), 4, out)
        decoded = torch.empty(x.numel())
        assert kernels.decode_words(out, th.float(), 4, x.numel(), decoded)
        assert torch.get_num_threads() == threads  # the kernels leave torch's setting alone
        results.append((out, decoded))
    torch.set_num_threads(1)
    assert np.array_equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_switches_turn_the_kernels_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert kernels.available()
    with kernels.disabled():
        assert not kernels.available()
        assert not kernels.decode_words(np.zeros(1, np.int64), torch.zeros(2), 1, 3, torch.empty(3))
    monkeypatch.setenv("OPTIQUANT_KERNELS", "0")
    assert not kernels.available()
    monkeypatch.setenv("OPTIQUANT_KERNELS", "1")
    assert kernels.available()
    monkeypatch.setenv("OPTIQUANT_SIMD", "0")
    assert not simd._host_has_avx512()  # read when the module is imported


def test_unsuitable_buffers_fall_back_and_bad_arguments_raise() -> None:
    words = np.zeros(4, dtype=np.int64)
    lut = torch.zeros(16)
    assert not kernels.decode_words(words, lut, 4, 32, torch.empty(64)[::2])  # not contiguous
    assert not kernels.decode_words(words, lut.double(), 4, 64, torch.empty(64))  # dtypes differ
    assert not kernels.decode_words(words, lut, 4, 63, torch.empty(64)[1:])  # misaligned rows
    with pytest.raises(ValueError, match="cannot hold"):
        kernels.decode_words(words, lut, 4, 65, torch.empty(65))
    x = np.zeros(10, dtype=np.float32)
    table = np.zeros(3, dtype=np.float32)
    with pytest.raises(TypeError, match="float32/float64"):
        kernels.encode(x.astype(np.float16), 1.0, 0.0, 2.0, table, 2, np.empty(1, np.int64))
    with pytest.raises(TypeError, match="same dtype"):
        kernels.encode(x, 1.0, 0.0, 2.0, table.astype(np.float64), 2, np.empty(1, np.int64))
    with pytest.raises(ValueError, match="bits"):
        kernels.encode(x, 1.0, 0.0, 2.0, table, 0, np.empty(1, np.int64))
    with pytest.raises(ValueError, match="out must hold 1"):
        kernels.encode(x, 1.0, 0.0, 2.0, table, 2, np.empty(2, np.int64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.uint8])
def test_fingerprint_kernel_equals_the_torch_sums(dtype: torch.dtype) -> None:
    from optiquant.quant.base import _fingerprint

    x = (torch.randn(70_001, generator=torch.Generator().manual_seed(3)) * 50).to(dtype)
    (fast,), (slow,) = _both(lambda: (_fingerprint(x),))
    assert fast == slow
    raw = x.reshape(-1).view(torch.uint8)
    size = next(s for s in (8, 4, 2, 1) if raw.numel() % s == 0)
    v = raw.view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[size]).long()
    index = torch.arange(v.numel())
    assert fast == (int(v.sum()), int((v * index).sum()))


needs_vector = pytest.mark.skipif(
    not kernels.vectorized(torch.float32), reason="needs an AVX-512 CPU for the vector steps"
)


@needs_vector
@pytest.mark.parametrize("n", [0, 15, 16, 17, 70_000, 70_015])
def test_vector_fingerprint_of_int64_words_equals_the_scalar_sums(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    v = torch.randint(-(2**63), 2**63 - 1, (n,), dtype=torch.int64, generator=gen)
    v[: n // 3] = torch.iinfo(torch.int64).max  # sums that wrap many times
    fast = kernels._fingerprint_simd_kernel(v.numpy())
    assert fast == kernels._fingerprint_kernel(v.numpy())
    signed = [int(np.uint64(x).view(np.int64)) for x in fast]
    assert signed == [int(v.sum()), int((v * torch.arange(n)).sum())]


@needs_vector
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("n", [16, 1000, 65_536 + 24, 300_007 - 7])
def test_stream_decode_equals_the_table_lookup(bits: int, n: int) -> None:
    from optiquant.io.bitpack import pack_bits

    gen = torch.Generator().manual_seed(bits * 1000 + n)
    n -= n % (8 // bits)  # whole bytes, as the codecs call it
    codes = torch.randint(0, 2**bits, (n,), generator=gen)
    table = torch.randn(2**bits, generator=gen)
    out = np.empty(n, dtype=np.float32)
    kernels.decode_stream(pack_bits(codes, bits).numpy(), bits, table.numpy(), out)
    assert np.array_equal(out, table[codes].numpy())


@needs_vector
@pytest.mark.parametrize("codec", ["uniform", "lsq"])
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_codecs_decode_the_same_with_the_stream_kernel(codec: str, bits: int) -> None:
    from optiquant.quant.codecs import LSQCodec, UniformCodec, encode_lsq, encode_uniform

    w = _randn(2**17 + 64, seed=bits).reshape(-1, 64)
    if codec == "uniform":
        packed = UniformCodec().pack(encode_uniform(w, bits))
        decode = UniformCodec().decode
    else:
        packed = LSQCodec().pack(encode_lsq(w, torch.tensor(0.05), bits))
        decode = LSQCodec().decode
    fast, slow = _both(lambda: decode(packed))
    assert torch.equal(fast, slow)
    into = torch.empty_like(w)
    decode(packed, out=into)
    assert torch.equal(into, slow)


@needs_vector
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("offset", [0, 1])
def test_stream_decode_with_streaming_stores_equals_the_table_lookup(
    bits: int, offset: int
) -> None:
    from optiquant.io.bitpack import pack_bits

    n = kernels.STREAM_BYTES // 4 + 1000
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (n,), generator=gen)
    table = torch.randn(2**bits, generator=gen)
    out = torch.empty(n + offset)[offset:].numpy()  # torch's buffers start 64-byte aligned
    assert kernels.streams(out) == (offset == 0)
    kernels.decode_stream(pack_bits(codes, bits).numpy(), bits, table.numpy(), out)
    assert np.array_equal(out, table[codes].numpy())


@needs_vector
def test_codec_decode_streams_only_into_memory_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from optiquant.quant import memory
    from optiquant.quant.codecs import UniformCodec, encode_uniform

    monkeypatch.setattr(memory, "_cache", memory._Cache(64 << 20))  # empty
    seen = []
    decode = kernels.decode_stream

    def spy(data, bits, table, out):  # type: ignore[no-untyped-def]
        seen.append(kernels.streams(out))
        decode(data, bits, table, out)

    monkeypatch.setattr(kernels, "decode_stream", spy)
    packed = UniformCodec().pack(encode_uniform(_randn(kernels.STREAM_BYTES, seed=2), 4))
    fresh = UniformCodec().decode(packed)  # allocates its output
    target = torch.zeros_like(fresh)
    UniformCodec().decode(packed, out=target)  # writes memory in use
    expected = fresh.clone()
    del fresh  # its block goes back to the cache: a third decode reuses it
    again = UniformCodec().decode(packed)
    assert seen == [False, True, True]
    assert torch.equal(expected, target) and torch.equal(again, target)


@needs_vector
@pytest.mark.parametrize("k", list(range(1, 17)))
def test_word_decode_with_streaming_stores_equals_the_table_lookup(k: int) -> None:
    n = kernels.STREAM_BYTES // 4 + 16 * 64 * k + 5  # several patterns and a scalar tail
    gen = torch.Generator().manual_seed(300 + k)
    codes = torch.randint(0, 1 << k, (n,), generator=gen)
    lut = torch.randn(1 << k, generator=gen)
    out = torch.empty(n)
    assert kernels.streams(out.numpy())
    assert kernels.decode_words(pack_words(codes, k).numpy(), lut, k, n, out)
    assert torch.equal(out, lut[codes])


@needs_vector
def test_dequantize_streams_into_reused_memory_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from optiquant.quant import memory

    monkeypatch.setattr(memory, "_cache", memory._Cache(64 << 20))
    seen = []
    decide = kernels.streams

    def spy(out):  # type: ignore[no-untyped-def]
        seen.append(decide(out))
        return seen[-1]

    monkeypatch.setattr(kernels, "streams", spy)
    q, info = quantize(_randn(kernels.STREAM_BYTES // 2, seed=5), k=8, beta=1.0)
    first = dequantize(q, **info)  # fresh memory
    expected = first.clone()
    del first  # its block goes back to the cache
    again = dequantize(q, **info)
    assert seen == [False, True]
    assert torch.equal(again, expected)


def test_stream_decode_rejects_bad_arguments() -> None:
    out = np.empty(64, dtype=np.float32)
    table = np.zeros(16, dtype=np.float32)
    if not kernels.vectorized(torch.float32):
        with pytest.raises(ValueError, match="vector kernels"):
            kernels.decode_stream(np.zeros(32, np.uint8), 4, table, out)
        return
    with pytest.raises(ValueError, match="bits in 1, 2, 4, 8"):
        kernels.decode_stream(np.zeros(32, np.uint8), 3, table, out)
    with pytest.raises(ValueError, match="uint8 bytes"):
        kernels.decode_stream(np.zeros(8, np.uint8), 4, table, out)
    with pytest.raises(ValueError, match="2\\*\\*bits entries"):
        kernels.decode_stream(np.zeros(32, np.uint8), 4, table[:8], out)


@needs_vector
@pytest.mark.parametrize("n", [16, 17, 31, 1000, 65_536 + 5])
def test_extremes_find_the_first_minimum_and_maximum(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=gen)
    assert kernels.extremes(x.numpy()) == (int(torch.argmin(x)), int(torch.argmax(x)))
    # Repeated extremes, in several lanes and in the tail: the first one counts.
    x = torch.randint(-3, 4, (n,), generator=gen).float()
    assert kernels.extremes(x.numpy()) == (int(torch.argmin(x)), int(torch.argmax(x)))
    x[n - 1] = float("nan")
    assert kernels.extremes(x.numpy()) is None
    x[n - 1] = 0.0
    x[n // 2] = float("nan")
    assert kernels.extremes(x.numpy()) is None
    assert kernels.extremes(x.double().numpy()) is None  # float32 only


# ------------------------------------------------------------- quantizer codecs
@pytest.mark.parametrize("n", [70_000, 70_001, 2**20 + 3])
@pytest.mark.parametrize("bits", [1, 4, 8, 12, 16])
def test_uniform_and_lsq_codes_equal_the_torch_steps(n: int, bits: int) -> None:
    from optiquant.quant.codecs import encode_lsq, encode_uniform

    w = _randn(n, seed=bits) * 3
    w[:6] = torch.tensor([0.125, -0.125, 0.375, 2.625, -1e-8, 1e-8])  # x / 0.25 ties at .5
    a, b = _both(lambda: encode_uniform(w, bits))
    assert torch.equal(a.tensors["range"], b.tensors["range"])
    assert torch.equal(a.tensors["codes"], b.tensors["codes"])
    a, b = _both(lambda: encode_lsq(w, torch.tensor(0.25), bits))
    assert torch.equal(a.tensors["codes"], b.tensors["codes"])


@pytest.mark.parametrize("group_size", [1, 7, 8, 16])
def test_grouped_codes_equal_the_torch_steps(group_size: int) -> None:
    from optiquant.quant.codecs import encode_grouped

    w = _randn(300_001, seed=group_size)
    gen = torch.Generator().manual_seed(group_size)
    widths = torch.randint(1, 17, (-(-w.numel() // group_size),), generator=gen)
    a, b = _both(lambda: encode_grouped(w, widths, group_size))
    assert torch.equal(a.tensors["codes"], b.tensors["codes"])


def test_kernel_range_raises_on_inf_and_nan() -> None:
    from optiquant.quant.codecs import encode_uniform

    for bad in (float("inf"), float("-inf"), float("nan")):
        w = _randn(kernels.MIN_NUMEL * 2, seed=1)
        w[12345] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            encode_uniform(w, 4)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("n", [16, 70_001, 2**20 + 5])
def test_pack_stream_equals_pack_bits(bits: int, n: int) -> None:
    from optiquant.io.bitpack import pack_bits
    from optiquant.quant.codecs import pack_codes

    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(n))
    codes = codes.to(torch.uint8)
    out = np.empty(-(-n * bits // 8), dtype=np.uint8)
    kernels.pack_stream(codes.numpy(), bits, out)
    assert np.array_equal(out, pack_bits(codes, bits).numpy())
    fast, slow = _both(lambda: pack_codes(codes, bits))
    assert torch.equal(fast, slow)


def test_code_kernels_reject_bad_arguments() -> None:
    x = np.zeros(64, dtype=np.float32)
    with pytest.raises(ValueError, match="bits in 1, 2, 4, 8"):
        kernels.pack_stream(np.zeros(8, np.uint8), 3, np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="4 uint8 bytes"):
        kernels.pack_stream(np.zeros(8, np.uint8), 4, np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="inv must be float32"):
        kernels.affine_codes(x, 0.0, np.ones(3, np.float32), 8, np.zeros(64, np.uint8))
    with pytest.raises(ValueError, match="1-D float32"):
        kernels.lsq_codes(x.astype(np.float64), 1.0, -2, 1, np.zeros(64, np.uint8))
    with pytest.raises(ValueError, match="out must be"):
        kernels.lsq_codes(x, 1.0, -2, 1, np.zeros(63, np.uint8))


def _grouped_case(n: int, group_size: int, seed: int, low: int = 1, high: int = 16):  # type: ignore[no-untyped-def]
    from optiquant.io import pack_groups

    groups = -(-n // group_size)
    gen = torch.Generator().manual_seed(seed)
    widths = torch.randint(low, high + 1, (groups,), generator=gen).to(torch.uint8)
    limit = (1 << widths.long()).repeat_interleave(group_size)
    codes = torch.randint(0, 2**16, (groups * group_size,), generator=gen) % limit
    return codes, widths, pack_groups(codes, widths, group_size)


@needs_vector
@pytest.mark.parametrize("byte_steps", [True, False], ids=["grouped8", "scalar"])
@pytest.mark.parametrize(
    ("n", "group_size", "low"),
    [(2**20, 8, 1), (70_001, 8, 1), (100_000, 16, 1), (5_000, 24, 1), (8, 8, 1), (40_000, 8, 0)],
)
def test_grouped_decode_equals_the_affine_values(
    n: int, group_size: int, low: int, byte_steps: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both decoders (the AVX-512 VBMI step and the scalar units) against the formula,
    with partial last groups, groups of several units, and empty (0-bit) groups."""
    if byte_steps and not simd.byte_steps_supported():
        pytest.skip("this CPU lacks AVX-512BW or VBMI")
    monkeypatch.setattr(simd, "_BYTE_STEPS", byte_steps)
    codes, widths, data = _grouped_case(n, group_size, seed=n, low=low)
    steps = torch.rand(17, generator=torch.Generator().manual_seed(1))
    out = np.empty(n, dtype=np.float32)
    kernels.decode_grouped(data.numpy(), widths.numpy(), group_size, steps.numpy(), -0.75, out)
    per_value = steps[widths.long()].repeat_interleave(group_size)
    expected = (codes.float() * per_value - 0.75)[:n]  # two roundings, as torch's mul_, add_
    assert np.array_equal(out, expected.numpy())


@needs_vector
def test_grouped_decode_rejects_bad_arguments() -> None:
    _, widths, data = _grouped_case(64, 8, seed=0)
    steps = np.ones(17, dtype=np.float32)
    out = np.empty(64, dtype=np.float32)
    with pytest.raises(ValueError, match="multiple of 8"):
        kernels.decode_grouped(data.numpy(), widths.numpy(), 4, steps, 0.0, out)
    with pytest.raises(ValueError, match="bytes, the widths need"):
        kernels.decode_grouped(data.numpy()[:-1], widths.numpy(), 8, steps, 0.0, out)
    with pytest.raises(ValueError, match="not what 8 groups hold"):
        kernels.decode_grouped(data.numpy(), widths.numpy(), 8, steps, 0.0, out[:50])
    with pytest.raises(ValueError, match="17 entries"):
        kernels.decode_grouped(data.numpy(), widths.numpy(), 8, steps[:16], 0.0, out)
    wide = widths.numpy().copy()
    wide[0] = 17
    with pytest.raises(ValueError, match="exceed 16 bits"):
        kernels.decode_grouped(data.numpy(), wide, 8, steps, 0.0, out)


@needs_vector
def test_grouped_vector_reads_stay_inside_the_stream() -> None:
    """The rank limit per width: every unit below it reads 8 bytes inside the data in
    each of its slices; the first unit at it would read past the end."""
    for seed, group_size in [(0, 8), (1, 16), (2, 8)]:
        _, widths, data = _grouped_case(3_000 + 8 * seed, group_size, seed=seed)
        counts = np.bincount(widths.numpy(), minlength=17)
        geo, _, lim, size = kernels._grouped_layout(counts, group_size, data.numel())
        assert size == data.numel()
        start, adv = geo[0], geo[1]
        assert lim[0] == 0  # width 0 never goes through the vector step
        for w in range(1, 17):
            units = counts[w] * group_size // 8
            if not units:
                continue
            last_read = [start[w, k] + (lim[w] - 1) * adv[w, k] + 8 for k in range(4) if adv[w, k]]
            if lim[w] <= units:  # some unit of this width stays scalar
                assert max(last_read) <= size
                assert any(
                    start[w, k] + lim[w] * adv[w, k] + 8 > size for k in range(4) if adv[w, k]
                )
            else:
                ends = [start[w, k] + (units - 1) * adv[w, k] + 8 for k in range(4) if adv[w, k]]
                assert max(ends) <= size


@needs_vector
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32])
@pytest.mark.parametrize(("groups", "group_size"), [(1, 8), (3, 16), (5_000, 8), (2_000, 24)])
def test_pack_grouped_equals_pack_groups(dtype: type, groups: int, group_size: int) -> None:
    """The compiled grouped packer writes pack_groups' stream byte for byte, with empty
    (0-bit) groups, full 16-bit groups and bits above a group's width dropped."""
    from optiquant.io import pack_groups

    gen = np.random.default_rng(groups + group_size)
    top = {np.uint8: 8, np.int16: 15, np.int32: 16}[dtype]
    widths = gen.integers(0, top + 1, groups).astype(np.uint8)
    limit = (1 << widths.astype(np.int64)).repeat(group_size)
    codes = (gen.integers(0, 2**16, groups * group_size) % limit).astype(dtype)
    expected = pack_groups(torch.from_numpy(codes), torch.from_numpy(widths), group_size)
    assert np.array_equal(kernels.pack_grouped(codes, widths, group_size), expected.numpy())
    noisy = codes | (~((limit - 1).astype(dtype)) & np.array(0x5A5A, dtype=np.int64).astype(dtype))
    assert np.array_equal(kernels.pack_grouped(noisy, widths, group_size), expected.numpy())


@needs_vector
def test_pack_grouped_rejects_bad_arguments() -> None:
    codes, widths = np.zeros(16, np.uint8), np.ones(2, np.uint8)
    with pytest.raises(ValueError, match="multiple of 8"):
        kernels.pack_grouped(codes, widths, 4)
    with pytest.raises(ValueError, match="uint8, int16 or int32"):
        kernels.pack_grouped(codes.astype(np.int64), widths, 8)
    with pytest.raises(ValueError, match="one per group"):
        kernels.pack_grouped(codes, np.ones(3, np.uint8), 8)
    with pytest.raises(ValueError, match="exceed 16 bits"):
        kernels.pack_grouped(codes, np.array([1, 17], np.uint8), 8)


@needs_vector
@pytest.mark.parametrize("step", ["pack_grouped", "decode_grouped"])
@pytest.mark.parametrize(("low", "high"), [(2, 8), (2, 15), (5, 5), (16, 16)])
def test_grouped_codec_steps_give_the_same_with_the_kernels(
    step: str, low: int, high: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optiquant.quant.codecs import GroupedCodec, encode_grouped

    w = _randn(2**17 + 40, seed=low)
    gen = torch.Generator().manual_seed(high)
    widths = torch.randint(low, high + 1, (-(-w.numel() // 8),), generator=gen)
    enc = encode_grouped(w, widths, 8)
    packed = GroupedCodec().pack(enc)
    calls = []
    kernel = getattr(kernels, step)
    monkeypatch.setattr(kernels, step, lambda *a: calls.append(1) or kernel(*a))
    if step == "pack_grouped":
        fast, slow = _both(lambda: GroupedCodec().pack(enc).tensors["codes"])
    else:
        fast, slow = _both(lambda: GroupedCodec().decode(packed))
    assert calls == [1]  # the kernel ran for the first, not the second
    assert torch.equal(fast, slow)


@needs_vector
@pytest.mark.parametrize("group_size", [8, 16])
def test_grouped_decode_in_two_threads_equals_one(group_size: int) -> None:
    """Each worker ranks the groups before its part itself: the parts join seamlessly."""
    codes, widths, data = _grouped_case(2**20 + 24, group_size, seed=group_size)
    steps = np.linspace(0.5, 2.0, 17, dtype=np.float32)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)  # conftest restores the setting
        out = np.empty(2**20 + 24, dtype=np.float32)
        kernels.decode_grouped(data.numpy(), widths.numpy(), group_size, steps, 0.25, out)
        results.append(out)
    per_value = torch.from_numpy(steps)[widths.long()].repeat_interleave(group_size)
    expected = (codes.float() * per_value + 0.25)[: 2**20 + 24]
    assert np.array_equal(results[0], expected.numpy())
    assert np.array_equal(results[1], results[0])
