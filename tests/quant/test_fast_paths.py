"""The fast decoding, packing and noise paths agree bit for bit with the reference ones.

Packed encodings are decoded through per-byte tables and bucket-ordered gathers;
the references are the element-wise decoders applied to the unpacked codes.
"""

from __future__ import annotations

import math

import pytest
import torch

import optiquant.quant as oq
from optiquant.io.bitpack import _as_rows, pack_groups, unpack_bits, unpack_groups
from optiquant.quant.base import _fingerprint
from optiquant.quant.codecs import (
    GroupedCodec,
    LSQCodec,
    UniformCodec,
    encode_grouped,
    encode_lsq,
    encode_uniform,
)

MB = 2**20


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(
        a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)
    )


def _reference(enc):  # element-wise decode of the unpacked form
    return enc.unpack().decode()


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("n", [1, 7, 8, 1000, 4099])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_uniform_and_lsq_packed_decode_is_bitwise(bits: int, n: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(bits * 7919 + n)
    w = torch.randn(n, generator=gen).to(dtype)
    for enc in (encode_uniform(w, bits), encode_lsq(w, torch.tensor(0.37), bits)):
        codec = UniformCodec() if enc.scheme == "uniform" else LSQCodec()
        packed = codec.pack(enc)
        assert _bitwise_equal(packed.decode(), _reference(enc))


@pytest.mark.parametrize("gs", [1, 3, 8, 16])
@pytest.mark.parametrize("spread", [(1, 16), (5, 12), (8, 8), (4, 4), (2, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grouped_packed_decode_is_bitwise(gs: int, spread: tuple[int, int], dtype) -> None:
    gen = torch.Generator().manual_seed(gs * 31 + spread[0])
    for n in (gs * 97, gs * 97 - 1 if gs > 1 else 5):
        groups = -(-n // gs)
        widths = torch.randint(spread[0], spread[1] + 1, (groups,), generator=gen)
        w = torch.randn(n, generator=gen, dtype=dtype)
        enc = encode_grouped(w, widths, gs)
        packed = GroupedCodec().pack(enc)
        assert _bitwise_equal(packed.decode(), _reference(enc))
        # the decoded values are the documented closed form
        codes = enc.tensors["codes"][:n].double()
        lo, hi = w.min().double(), w.max().double()
        step = ((hi - lo) / (2.0 ** widths.double() - 1)).repeat_interleave(gs)[:n]
        tol = 8 * torch.finfo(dtype).eps * float(w.abs().max())  # a few roundings of the range
        torch.testing.assert_close(packed.decode().double(), lo + codes * step, rtol=0, atol=tol)


@pytest.mark.parametrize("scheme", ["uniform", "grouped-mixed", "grouped-one", "lsq"])
def test_decode_into_unaligned_and_strided_outputs(scheme: str) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=gen)
    if scheme == "uniform":
        enc = encode_uniform(w, 4)
    elif scheme == "lsq":
        enc = encode_lsq(w, torch.tensor(0.1), 2)
    else:
        groups = 64 * 48 // 8
        widths = torch.randint(3, 12, (groups,), generator=gen)
        enc = encode_grouped(w, widths if scheme == "grouped-mixed" else widths * 0 + 8, 8)
    packed = enc.pack()
    expected = _reference(enc)
    for offset in (1, 2, 3, 5):  # storage offsets that break 8- and 16-byte alignment
        buf = torch.zeros(offset + w.numel())
        out = buf[offset:].view(64, 48)
        packed.decode(out=out)
        assert _bitwise_equal(out.contiguous(), expected)
    out = torch.zeros(48, 64).t()  # non-contiguous
    packed.decode(out=out)
    assert _bitwise_equal(out.contiguous(), expected)
    out64 = torch.zeros(64, 48, dtype=torch.float64)  # another dtype
    packed.decode(out=out64)
    assert torch.equal(out64, expected.double())


@pytest.mark.parametrize("gs", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_grouped_bitpack_round_trip_wide_rows(gs: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(gs)
    top = {torch.uint8: 8, torch.int16: 15, torch.int32: 16}[dtype]
    groups = 300
    widths = torch.randint(0, top + 1, (groups,), generator=gen)
    codes = torch.randint(0, 2**16, (groups, gs), generator=gen) % (2 ** widths.unsqueeze(1))
    packed = pack_groups(codes.reshape(-1), widths, gs)
    out = unpack_groups(packed, widths, gs, dtype=dtype)
    assert out.dtype == dtype and torch.equal(out.long(), codes.reshape(-1))


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_unpack_slices_match_shifts(bits: int) -> None:
    data = torch.arange(256, dtype=torch.uint8)
    per = 8 // bits
    codes = unpack_bits(data, bits, 256 * per, dtype=torch.int64).view(256, per)
    expected = (data.long().unsqueeze(1) >> (torch.arange(per) * bits)) & ((1 << bits) - 1)
    assert torch.equal(codes, expected)


def test_rows_views_respect_alignment() -> None:
    base = torch.arange(1000, dtype=torch.int16)
    for offset in range(8):
        rows = base[offset : offset + 800].view(100, 8)
        wide = _as_rows(rows)
        assert wide.data_ptr() == rows.data_ptr()
        assert wide.data_ptr() % wide.element_size() == 0
        assert torch.equal(wide.reshape(-1).view(torch.int16), rows.reshape(-1))


def test_packed_state_cache_sees_silent_edits() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    q = oq.UniformQuantizer(model, bits=4, min_size=0)
    first = q.get_quantized_state()
    again = q.get_quantized_state()
    assert torch.equal(
        first["params"]["weight"]["tensors"]["codes"], again["params"]["weight"]["tensors"]["codes"]
    )
    with torch.no_grad():
        model.weight.data.mul_(-1.0)  # bypasses the version counter
    edited = q.get_quantized_state()
    fresh = oq.restore_quantized_state(torch.nn.Linear(64, 64), edited)
    assert torch.equal(fresh.weight, q.quantized_weights()["weight"])
    assert not torch.equal(
        fresh.weight, oq.restore_quantized_state(torch.nn.Linear(64, 64), first).weight
    )


def test_quantizer_restore_then_state_round_trips() -> None:
    torch.manual_seed(0)
    source = torch.nn.Linear(128, 32)
    q = oq.DiffQuantizer(source, group_size=8, min_size=0)
    with torch.no_grad():
        source.weight_diffq.uniform_(-3, 3)
    state = q.get_quantized_state()
    target = torch.nn.Linear(128, 32)
    q2 = oq.DiffQuantizer(target, group_size=8, min_size=0)
    q2.restore_quantized_state(state)
    again = q2.get_quantized_state()
    for key in ("codes", "widths", "range"):
        assert torch.equal(
            again["params"]["weight"]["tensors"][key], state["params"]["weight"]["tensors"][key]
        )
    assert torch.equal(q2.quantized_weights()["weight"], q.quantized_weights()["weight"])


def test_fused_bits_noise_gradients() -> None:
    from optiquant.quant.diffq import _BitsNoiseScale, _BitsPseudoQuantNoise, _PseudoQuantNoise

    gen = torch.Generator().manual_seed(0)
    for n, groups in ((24, 6), (10, 4), (7, 7), (9, 1)):
        w = torch.randn(n, dtype=torch.float64, generator=gen, requires_grad=True)
        logit = torch.randn(groups, dtype=torch.float64, generator=gen, requires_grad=True)
        eps = torch.randn(n, dtype=torch.float64, generator=gen)

        def fused(w, logit, eps=eps):
            return _BitsPseudoQuantNoise.apply(w, logit, eps, 0.5, 2.0, 6.0)

        def composed(w, logit, eps=eps):
            return _PseudoQuantNoise.apply(w, _BitsNoiseScale.apply(logit, 2.0, 6.0), eps, 0.5)

        assert torch.autograd.gradcheck(fused, (w, logit), eps=1e-6, atol=1e-8)
        torch.testing.assert_close(fused(w, logit), composed(w, logit))


@pytest.mark.parametrize("group_size", [1, 8])
def test_size_gradient_after_training_forward(group_size: int) -> None:
    """model_size() reuses the forward's sigmoids: same value and gradient as without."""
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 32, bias=False)
    q = oq.DiffQuantizer(model, group_size=group_size, min_size=0)
    q.no_optimizer()
    with torch.no_grad():
        model.weight_diffq.uniform_(-2, 2)
    logit = model.weight_diffq
    model.train()
    out = model(torch.randn(3, 64))
    size = q.model_size()
    (grad,) = torch.autograd.grad(size, logit)
    t = torch.sigmoid(logit.detach())
    expected = group_size * (15 - 2) * t * (1 - t) / (8 * MB)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=0)
    del out
    q2_size = q.model_size()  # after the forward's tensors are gone: recomputed
    torch.testing.assert_close(q2_size, size)


def test_fast_noise_follows_the_torch_seed() -> None:
    from optiquant.quant.noise import HashNoise

    draws = []
    for _ in range(2):
        torch.manual_seed(123)
        draws.append(
            torch.cat(
                [
                    HashNoise.draw("gaussian").samples(1001, torch.float32, torch.device("cpu"))
                    for _ in range(3)
                ]
            )
        )
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0][:1001], draws[0][1001:2002])
    assert math.isfinite(float(draws[0].abs().max()))


def test_grouped_round_trip_from_unaligned_buffers() -> None:
    """Packed codes read from a file may sit at any address: wide views are not used there."""
    gen = torch.Generator().manual_seed(5)
    groups, gs = 200, 8
    widths = torch.randint(9, 16, (groups,), generator=gen)
    codes = torch.randint(0, 2**16, (groups, gs), generator=gen) % (2 ** widths.unsqueeze(1))
    packed = pack_groups(codes.reshape(-1), widths, gs)
    for shift in range(1, 4):
        raw = bytearray(shift) + bytearray(packed.numpy().tobytes())
        moved = torch.frombuffer(raw, dtype=torch.uint8)[shift:]
        assert torch.equal(unpack_groups(moved, widths, gs).long(), codes.reshape(-1))
        unpacked = torch.frombuffer(
            bytearray(shift * 2) + bytearray(codes.to(torch.int16).numpy().tobytes()),
            dtype=torch.int16,
        )[shift:]
        assert torch.equal(pack_groups(unpacked, widths, gs), packed)


@pytest.mark.parametrize("shape", [(64, 64), (37, 29), (3000,)])
def test_fingerprint_is_a_position_weighted_sum(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    raw = x.reshape(-1).view(torch.uint8)
    v = raw.view(torch.int64) if raw.numel() % 8 == 0 else raw.view(torch.int32).to(torch.int64)
    i = torch.arange(v.numel(), dtype=torch.int64)
    assert _fingerprint(x) == (int(v.sum()), int((v * i).sum()))


def test_packed_state_cache_sees_silent_reordering() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    q = oq.UniformQuantizer(model, bits=4, min_size=0)
    first = q.get_quantized_state()
    with torch.no_grad():
        model.weight.data.copy_(model.weight.data.flip(0))  # same values, same plain sum
    flipped = q.get_quantized_state()
    fresh = oq.restore_quantized_state(torch.nn.Linear(64, 64), flipped)
    assert torch.equal(fresh.weight, q.quantized_weights()["weight"])
    before = oq.restore_quantized_state(torch.nn.Linear(64, 64), first).weight
    assert torch.equal(fresh.weight, before.flip(0))
