"""The built-in storage schemes: plain floats, min-max uniform codes, per-group widths, LSQ.

Each scheme comes as a pair: an ``encode_*`` function used by the quantizers and a
:class:`~optiquant.quant.encoded.Codec` registered under the scheme name that
packs, unpacks and decodes. Quantizers compute their eval-mode weights with the
same decode functions, so a stored state reproduces them bit for bit.

Min-max schemes (``"uniform"``, ``"grouped"``) store ``lo, hi = min(w), max(w)``
and codes ``c = round((w - lo) / (hi - lo) * (2**b - 1))``, decoded as
``lo + c * ((hi - lo) / (2**b - 1))``. ``"lsq"`` stores a scale ``s`` and codes
``c = clamp(round(w / s), -2**(b-1), 2**(b-1) - 1) + 2**(b-1)``, decoded as
``(c - 2**(b-1)) * s``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from optiquant.io.bitpack import (
    MAX_BITS,
    _as_rows,
    _as_rows_like,
    _buckets,
    _inverse,
    _slices,
    bits_needed,
    grouped_nbytes,
    pack_bits,
    pack_groups,
    packed_nbytes,
    unpack_bits,
    unpack_groups,
)
from optiquant.io.errors import FormatError
from optiquant.quant import kernels, memory
from optiquant.quant.encoded import Codec, EncodedTensor, register_codec

# The codec classes and decoders are reached through ``get_codec(scheme)``.
__all__ = [
    "codes_dtype",
    "compute_dtype",
    "encode_float",
    "encode_grouped",
    "encode_lsq",
    "encode_uniform",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_RANGE_DTYPES = (torch.float32, torch.float64)
_CODE_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype quantization math runs in: float64 for float64 tensors, else float32.

    >>> compute_dtype(torch.bfloat16), compute_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def codes_dtype(max_bits: int) -> torch.dtype:
    """The smallest integer dtype holding unsigned codes of ``max_bits`` bits.

    >>> codes_dtype(8), codes_dtype(15), codes_dtype(16)
    (torch.uint8, torch.int16, torch.int32)
    """
    return torch.uint8 if max_bits <= 8 else torch.int16 if max_bits <= 15 else torch.int32


def _check_weight(weight: torch.Tensor, name: str) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected a floating point tensor, got {weight!r:.60}")


def _finite_range(weight: torch.Tensor, name: str) -> torch.Tensor:
    """``[min, max]`` of ``weight`` in its compute dtype; raises on NaN/inf or emptiness."""
    if weight.numel() == 0:
        raise ValueError(f"{name}: cannot quantize an empty tensor")
    flat = _kernel_input(weight)
    found = kernels.extremes(flat.numpy()) if flat is not None else None
    if flat is not None and found is not None:
        lo, hi = flat[found[0]], flat[found[1]]
    else:
        lo, hi = torch.aminmax(weight.detach())
    rng = torch.stack([lo, hi]).to(compute_dtype(weight.dtype))
    if not bool(torch.isfinite(rng).all()):
        raise ValueError(f"{name}: weights contain NaN or inf; cannot quantize")
    return rng


def _kernel_ready(t: torch.Tensor, numel: int | None = None, vector: bool = False) -> bool:
    """Whether the compiled kernels take ``t``: contiguous, on the CPU, for work of at
    least ``kernels.MIN_NUMEL`` entries (``numel``, default ``t.numel()``), with the
    kernels switched on (and running as vector code, with ``vector``)."""
    return (
        t.device.type == "cpu"
        and t.is_contiguous()
        and (t.numel() if numel is None else numel) >= kernels.MIN_NUMEL
        and (kernels.vectorized(torch.float32) if vector else kernels.available())
    )


def _kernel_input(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` flat, when the compiled kernels take it (contiguous float32 on the CPU, large)."""
    if t.dtype != torch.float32 or not _kernel_ready(t):
        return None
    return t.detach().reshape(-1)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`~optiquant.io.pack_bits` of codes already known to fit ``bits`` bits
    (uint8 codes of 1, 2, 4 or 8 bits go through one compiled pass on the CPU).

    >>> pack_codes(torch.tensor([1, 2, 3], dtype=torch.uint8), 4).tolist()
    [33, 3]
    """
    if bits in (1, 2, 4, 8) and codes.dtype == torch.uint8 and _kernel_ready(codes):
        out = torch.empty(-(-codes.numel() * bits // 8), dtype=torch.uint8)
        kernels.pack_stream(codes.reshape(-1).numpy(), bits, out.numpy())
        return out
    return pack_bits(codes, bits, check=False)


_CHUNK = 1 << 16


def _chunk(numel: int, group_size: int, device: torch.device) -> int:
    """Elements per chunk: cache-sized on CPU (a whole number of groups), all elsewhere."""
    if device.type != "cpu":
        return max(numel, 1)
    return max(group_size, (_CHUNK // group_size) * group_size)


def _group_factor(factor: torch.Tensor, start: int, end: int, group_size: int) -> torch.Tensor:
    """The factors of the groups covering entries ``start:end`` (a whole number of groups)."""
    if factor.dim() == 0:
        return factor
    return factor[start // group_size : end // group_size].unsqueeze(1)


def _affine_codes(
    flat: torch.Tensor,
    lo: torch.Tensor,
    inv: torch.Tensor,
    group_size: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``floor((flat - lo) * inv + 0.5)`` as ``dtype``; ``inv`` is 0-d or one per group.

    The last group may be partial; its codes are padded with zeros to a whole group.
    """
    n = flat.numel()
    full = n - n % group_size
    padded = -(-n // group_size) * group_size
    out = (torch.zeros if padded != n else torch.empty)(padded, dtype=dtype, device=flat.device)
    x = _kernel_input(flat)
    if x is not None and lo.dtype == torch.float32 and inv.dtype == torch.float32:
        factors = inv.detach().reshape(-1).contiguous().numpy()
        kernels.affine_codes(x.numpy(), float(lo), factors, group_size, out[:n].numpy())
        return out
    step = _chunk(n, group_size, flat.device)
    buf = torch.empty(min(step, max(n, 1)), dtype=lo.dtype, device=flat.device)
    bounds = [(s, min(full, s + step)) for s in range(0, full, step)]
    if full < n:
        bounds.append((full, n))
    for start, end in bounds:
        b = buf[: end - start]
        b.copy_(flat[start:end])
        b.sub_(lo)
        if inv.dim() == 0:
            b.mul_(inv)
        elif end - start == group_size * ((end - start) // group_size):
            b.view(-1, group_size).mul_(_group_factor(inv, start, end, group_size))
        else:
            b.mul_(inv[start // group_size])
        b.add_(0.5)
        out[start:end] = b
    return out


def _affine_values(
    codes: torch.Tensor,
    lo: torch.Tensor,
    step_size: torch.Tensor,
    group_size: int,
    out: torch.Tensor,
) -> None:
    """Write ``codes * step_size + lo`` into the flat ``out`` (``step_size`` 0-d or per group).

    ``codes`` may be longer than ``out`` (a padded last group).
    """
    n = out.numel()
    full = n - n % group_size
    step = _chunk(n, group_size, out.device)
    bounds = [(s, min(full, s + step)) for s in range(0, full, step)]
    if full < n:
        bounds.append((full, n))
    for start, end in bounds:
        o = out[start:end]
        o.copy_(codes[start:end])
        if step_size.dim() == 0:
            o.mul_(step_size)
        elif (end - start) % group_size == 0:
            o.view(-1, group_size).mul_(_group_factor(step_size, start, end, group_size))
        else:
            o.mul_(step_size[start // group_size])
        o.add_(lo)


def _byte_table(values: torch.Tensor, bits: int) -> torch.Tensor:
    """``(256, 8 // bits)`` table: row ``b`` holds the values of the codes packed in byte ``b``
    (first code in the lowest bits), for single-slice widths (1, 2, 4, 8)."""
    per = 8 // bits
    byte = torch.arange(256, device=values.device).unsqueeze(1)
    shifts = torch.arange(per, device=values.device) * bits
    return values[(byte >> shifts) & ((1 << bits) - 1)].contiguous()


def _table_decodable(packed: torch.Tensor, bits: int, numel: int) -> bool:
    """Whether ``numel`` codes of ``bits`` bits packed in ``packed`` fill whole bytes of one
    stream, so that a per-byte table decodes them."""
    return bits in (1, 2, 4, 8) and numel % (8 // bits) == 0 and packed.numel() * 8 == numel * bits


def _stream_kernel_fits(packed: torch.Tensor, values: torch.Tensor, flat: torch.Tensor) -> bool:
    """Whether :func:`optiquant.quant.kernels.decode_stream` can write ``flat``."""
    return (
        flat.dtype == torch.float32
        and values.dtype == torch.float32
        and packed.dtype == torch.uint8
        and _kernel_ready(packed, flat.numel(), vector=True)
        and _kernel_ready(flat, vector=True)
    )


def _table_values(
    packed: torch.Tensor, bits: int, values: torch.Tensor, flat: torch.Tensor
) -> None:
    """Write into ``flat`` the values (``values[code]``) of the codes packed in ``packed``:
    one gather of whole rows per packed byte (see :func:`_table_decodable`), or the
    vector kernel's one lookup per code."""
    if _stream_kernel_fits(packed, values, flat):
        kernels.decode_stream(
            packed.detach().reshape(-1).numpy(),
            bits,
            values.detach().contiguous().numpy(),
            flat.detach().numpy(),
        )
        return
    per = 8 // bits
    dst = _as_rows(flat.view(-1, per))
    table = _as_rows_like(_byte_table(values, bits), dst)
    torch.index_select(table, 0, packed.reshape(-1).to(torch.int32), out=dst)


_FIELD_TABLES: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}


def _code_floats(packed: torch.Tensor, bits: int, numel: int, out: torch.Tensor) -> None:
    """Write the ``numel`` codes of a :func:`~optiquant.io.pack_bits` stream into the float
    tensor ``out`` as exact values, slice by slice: each slice adds ``field << offset``,
    looked up per packed byte (integers below ``2**16``: every sum is exact)."""
    start = 0
    scratch: torch.Tensor | None = None
    for index, (offset, width) in enumerate(_slices(bits)):
        size = -(-numel * width // 8)
        data = packed[start : start + size]
        start += size
        target = out
        if index:
            scratch = torch.empty_like(out) if scratch is None else scratch
            target = scratch
        if width == 8:
            target.copy_(data)
            if offset:
                target.mul_(float(2**offset))
        else:
            key = (width, offset, out.dtype, out.device)
            table = _FIELD_TABLES.get(key)
            if table is None:
                levels = torch.arange(2**width, dtype=out.dtype, device=out.device)
                table = _FIELD_TABLES[key] = _byte_table(levels.mul_(float(2**offset)), width)
            per = 8 // width
            whole = target if numel == size * per else out.new_empty(size * per)
            dst = _as_rows(whole.view(-1, per))
            torch.index_select(_as_rows_like(table, dst), 0, data.to(torch.int32), out=dst)
            if whole is not target:
                target.copy_(whole[:numel])
        if index:
            out.add_(target)


def _level_values(
    bits: int, device: torch.device, dtype: torch.dtype, finish: Callable[[torch.Tensor], object]
) -> torch.Tensor:
    """The decoded value of every code ``0 .. 2**bits - 1``: ``finish`` applies, in place,
    the very operations the element-wise decoder applies (so the values are bit-identical)."""
    values = torch.arange(2**bits, device=device, dtype=dtype)
    finish(values)
    return values


def _decode_with(
    enc: EncodedTensor, out: torch.Tensor | None, fill: Callable[[torch.Tensor], None]
) -> torch.Tensor:
    """Run ``fill(flat)`` on a compute-dtype buffer (``out`` itself when it fits)."""
    cdt = compute_dtype(enc.dtype)
    if out is not None and out.dtype == cdt and out.is_contiguous():
        fill(out.view(-1))
        return out
    device = _device_of(enc)
    if device.type == "cpu":
        buf, reused = memory.new_output(enc.numel, cdt)
    else:
        buf, reused = torch.empty(enc.numel, dtype=cdt, device=device), False
    with kernels.stores_for(reused):
        fill(buf)
    value = buf.view(enc.shape).to(enc.dtype)
    if out is None:
        return value
    out.copy_(value)
    return out


def _device_of(enc: EncodedTensor) -> torch.device:
    for value in enc.tensors.values():
        return value.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------------- float
def encode_float(tensor: torch.Tensor, float16: bool = False) -> EncodedTensor:
    """Store ``tensor`` as is, or in float16 when ``float16`` and it is a wider float.

    >>> encode_float(torch.ones(3), float16=True).tensors["value"].dtype
    torch.float16
    """
    value = tensor.detach()
    if float16 and value.dtype in (torch.float32, torch.float64):
        value = value.to(torch.float16)
    else:
        value = value.clone()
    return EncodedTensor(
        "float",
        tuple(tensor.shape),
        tensor.dtype,
        {},
        {"value": value.reshape(-1).contiguous()},
        packed=True,
    )


class FloatCodec(Codec):
    """Plain tensors (optionally stored in float16); packing changes nothing.

    >>> enc = encode_float(torch.tensor([1.0, 2.5]), float16=True)
    >>> FloatCodec().decode(enc)
    tensor([1.0000, 2.5000])
    """

    scheme = "float"

    def validate(self, enc: EncodedTensor) -> None:
        value = enc.tensors.get("value")
        if value is None:
            raise FormatError("'float' tensor is missing its 'value' entry")
        if value.numel() != enc.numel:
            raise FormatError(f"'float' value has {value.numel()} elements, expected {enc.numel}")
        if value.dtype != enc.dtype and not (
            value.dtype == torch.float16 and enc.dtype in (torch.float32, torch.float64)
        ):
            raise FormatError(f"'float' value has dtype {value.dtype}, expected {enc.dtype}")

    def decode_into(self, enc: EncodedTensor, out: torch.Tensor) -> torch.Tensor:
        return self.decode(enc, out=out)

    def decode(self, enc: EncodedTensor, out: torch.Tensor | None = None) -> torch.Tensor:
        value = enc.tensors["value"].to(enc.dtype).reshape(enc.shape)
        if out is None:
            return value
        return out.copy_(value)


# -------------------------------------------------------------------------------- uniform
def _check_range(enc: EncodedTensor) -> torch.Tensor:
    rng = Codec.require(enc, "range", _RANGE_DTYPES, 2)
    if not bool(torch.isfinite(rng).all()) or bool(rng[0] > rng[1]):
        raise FormatError(
            f"{enc.scheme!r} range must be finite with min <= max, got {rng.tolist()}"
        )
    return rng


def encode_uniform(weight: torch.Tensor, bits: int, name: str = "weight") -> EncodedTensor:
    """Min-max quantize ``weight`` to ``bits`` bits per entry (unpacked encoding).

    >>> enc = encode_uniform(torch.tensor([0.0, 0.5, 1.0]), 2)
    >>> enc.tensors["codes"].tolist(), enc.decode().tolist()
    ([0, 2, 3], [0.0, 0.6666666865348816, 1.0])
    """
    _check_weight(weight, name)
    rng = _finite_range(weight, name)
    lo, hi = rng[0], rng[1]
    levels = float(2**bits - 1)
    span = hi - lo
    inv = torch.where(span > 0, levels / span, torch.zeros_like(span))
    codes = _affine_codes(weight.detach().reshape(-1), lo, inv, 1, codes_dtype(bits))
    return EncodedTensor(
        "uniform", tuple(weight.shape), weight.dtype, {"bits": bits}, {"codes": codes, "range": rng}
    )


def decode_uniform_codes(
    codes: torch.Tensor,
    rng: torch.Tensor,
    bits: int,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``lo + codes * (hi - lo) / (2**bits - 1)`` with ``shape`` and ``dtype`` (into ``out``).

    >>> codes = torch.tensor([0, 1, 3], dtype=torch.uint8)
    >>> decode_uniform_codes(codes, torch.tensor([0.0, 3.0]), 2, (3,), torch.float32)
    tensor([0., 1., 3.])
    """
    step = (rng[1] - rng[0]) / float(2**bits - 1)
    enc_like = EncodedTensor("uniform", shape, dtype, {}, {"codes": codes})
    return _decode_with(enc_like, out, lambda flat: _affine_values(codes, rng[0], step, 1, flat))


class _SingleWidthCodec(Codec):
    """Codes of one width (``meta["bits"]``) plus one side tensor (``side``) of parameters.

    Subclasses check the side tensor in :meth:`validate`, give the in-place map from code
    to value (:meth:`level_map`, the element-wise decoder's own operations) and decode
    unpacked codes (:meth:`decode_codes`).
    """

    side = ""

    def require_codes(self, enc: EncodedTensor, bits: int) -> None:
        """Check the codes: packed bytes, or one integer code per element."""
        if enc.packed:
            self.require(enc, "codes", (torch.uint8,), packed_nbytes(enc.numel, bits))
        else:
            self.require(enc, "codes", _CODE_DTYPES, enc.numel)

    def _with_codes(self, enc: EncodedTensor, codes: torch.Tensor, packed: bool) -> EncodedTensor:
        return EncodedTensor(
            enc.scheme, enc.shape, enc.dtype, dict(enc.meta),
            {"codes": codes, self.side: enc.tensors[self.side]}, packed=packed,
        )  # fmt: skip

    def pack(self, enc: EncodedTensor) -> EncodedTensor:
        return self._with_codes(enc, pack_codes(enc.tensors["codes"], enc.meta["bits"]), True)

    def unpack(self, enc: EncodedTensor) -> EncodedTensor:
        bits = enc.meta["bits"]
        codes = unpack_bits(enc.tensors["codes"], bits, enc.numel, dtype=codes_dtype(bits))
        return self._with_codes(enc, codes, False)

    def decode_into(self, enc: EncodedTensor, out: torch.Tensor) -> torch.Tensor:
        return self.decode(enc, out=out)

    def decode(self, enc: EncodedTensor, out: torch.Tensor | None = None) -> torch.Tensor:
        bits = enc.meta["bits"]
        if enc.packed and _table_decodable(enc.tensors["codes"], bits, enc.numel):
            finish = self.level_map(enc, bits)

            def fill(flat: torch.Tensor) -> None:
                values = _level_values(bits, flat.device, flat.dtype, finish)
                _table_values(enc.tensors["codes"], bits, values, flat)

            return _decode_with(enc, out, fill)
        return self.decode_codes(enc.unpack(), out)

    def level_map(self, enc: EncodedTensor, bits: int) -> Callable[[torch.Tensor], object]:
        """In place, code -> value, exactly as the element-wise decoder computes it."""
        raise NotImplementedError(f"{type(self).__name__} must define level_map()")

    def decode_codes(self, enc: EncodedTensor, out: torch.Tensor | None) -> torch.Tensor:
        """Decode unpacked ``enc``."""
        raise NotImplementedError(f"{type(self).__name__} must define decode_codes()")


class UniformCodec(_SingleWidthCodec):
    """Per-tensor min-max codes of one width (``meta["bits"]``).

    >>> packed = UniformCodec().pack(encode_uniform(torch.tensor([0.0, 1.0, 2.0, 3.0]), 2))
    >>> packed.tensors["codes"].tolist(), UniformCodec().decode(packed).tolist()
    ([228], [0.0, 1.0, 2.0, 3.0])
    """

    scheme = "uniform"
    side = "range"

    def validate(self, enc: EncodedTensor) -> None:
        bits = self.meta_int(enc, "bits", 1, MAX_BITS)
        _check_range(enc)
        self.require_codes(enc, bits)

    def level_map(self, enc: EncodedTensor, bits: int) -> Callable[[torch.Tensor], object]:
        rng = enc.tensors["range"]
        step = (rng[1] - rng[0]) / float(2**bits - 1)
        return lambda v: v.mul_(step).add_(rng[0])

    def decode_codes(self, enc: EncodedTensor, out: torch.Tensor | None) -> torch.Tensor:
        t = enc.tensors
        return decode_uniform_codes(
            t["codes"], t["range"], enc.meta["bits"], enc.shape, enc.dtype, out=out
        )


# -------------------------------------------------------------------------------- grouped
def _group_table(rng: torch.Tensor, numerator: bool) -> torch.Tensor:
    """Per-width factor: ``(2**w - 1) / span`` (numerator) or ``span / (2**w - 1)``."""
    widths = torch.arange(MAX_BITS + 1, device=rng.device, dtype=rng.dtype)
    levels = (torch.exp2(widths) - 1).clamp_min(1.0)
    span = rng[1] - rng[0]
    if numerator:
        return torch.where(span > 0, levels / span, torch.zeros_like(levels))
    return span / levels


def _per_group(table: torch.Tensor, widths: torch.Tensor, uniform: bool) -> torch.Tensor:
    """``table[widths]``, or the single 0-d entry when every group has the same width."""
    if uniform and widths.numel():
        return table[int(widths[0])]
    return table[widths.long()]


def encode_grouped(
    weight: torch.Tensor, widths: torch.Tensor, group_size: int, name: str = "weight"
) -> EncodedTensor:
    """Min-max quantize ``weight`` with one width (1..16) per group of ``group_size``.

    ``widths`` has one integer per group; the range is the whole tensor's. A last,
    partial group is padded with zero codes (stored, at most ``group_size - 1``).

    >>> enc = encode_grouped(torch.tensor([0.0, 0.3, 0.6, 1.0]), torch.tensor([1, 4]), 2)
    >>> enc.tensors["codes"].tolist()
    [0, 0, 9, 15]
    """
    _check_weight(weight, name)
    n = weight.numel()
    if group_size < 1:
        raise ValueError(f"{name}: group_size must be >= 1, got {group_size}")
    groups = -(-n // group_size)
    widths = widths.reshape(-1)
    if widths.numel() != groups:
        raise ValueError(f"{name}: expected {groups} widths, got {widths.numel()}")
    rng = _finite_range(weight, name)
    small = widths.to(torch.uint8)
    if groups:
        low, high = (int(v) for v in torch.aminmax(small))
        if low < 1 or high > MAX_BITS:
            raise ValueError(f"{name}: widths must lie in [1, {MAX_BITS}], got [{low}, {high}]")
    else:
        low = high = 1
    inv = _per_group(_group_table(rng, numerator=True), small, low == high)
    codes = _affine_codes(weight.detach().reshape(-1), rng[0], inv, group_size, codes_dtype(high))
    return EncodedTensor(
        "grouped",
        tuple(weight.shape),
        weight.dtype,
        {"group_size": group_size},
        {"codes": codes, "widths": small, "range": rng},
    )


def decode_grouped_codes(
    codes: torch.Tensor,
    widths: torch.Tensor,
    rng: torch.Tensor,
    group_size: int,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``lo + codes * (hi - lo) / (2**w_g - 1)`` per group, with ``shape`` and ``dtype``.

    >>> codes = torch.tensor([0, 1, 0, 15], dtype=torch.uint8)
    >>> widths = torch.tensor([1, 4], dtype=torch.uint8)
    >>> decode_grouped_codes(codes, widths, torch.tensor([0.0, 1.0]), 2, (4,), torch.float32)
    tensor([0., 1., 0., 1.])
    """
    low, high = torch.aminmax(widths) if widths.numel() else (widths.new_ones(()),) * 2
    step = _per_group(_group_table(rng, numerator=False), widths, bool(low == high))
    enc_like = EncodedTensor("grouped", shape, dtype, {}, {"codes": codes})
    return _decode_with(
        enc_like, out, lambda flat: _affine_values(codes, rng[0], step, group_size, flat)
    )


def _pack_grouped_codes(codes: torch.Tensor, widths: torch.Tensor, gs: int) -> torch.Tensor:
    """:func:`~optiquant.io.pack_groups` of codes known to fit their widths (one compiled
    pass on the CPU where the kernels run)."""
    if gs % 8 == 0 and codes.dtype in _GROUPED_CODES and widths.dtype == torch.uint8:
        flat = codes.reshape(-1).contiguous()
        if _kernel_ready(flat, vector=True):
            packed = kernels.pack_grouped(flat.numpy(), widths.contiguous().numpy(), gs)
            return torch.from_numpy(packed)
    return pack_groups(codes, widths, gs, check=False)


_GROUPED_CODES = (torch.uint8, torch.int16, torch.int32)


class GroupedCodec(Codec):
    """Per-tensor min-max range, one width per group of ``meta["group_size"]`` codes.

    Packed, the widths are stored as ``widths - meta["width_offset"]`` in
    ``meta["width_bits"]`` bits each (nothing when all groups share one width). A
    partial last group is stored padded to ``group_size`` codes.

    >>> weight = torch.tensor([0.0, 0.3, 0.6, 1.0])
    >>> enc = encode_grouped(weight, torch.tensor([1, 4]), 2)
    >>> packed = GroupedCodec().pack(enc)
    >>> packed.meta
    {'group_size': 2, 'width_offset': 1, 'width_bits': 2}
    >>> torch.equal(GroupedCodec().decode(packed), enc.decode())
    True
    """

    scheme = "grouped"

    def _groups(self, enc: EncodedTensor) -> tuple[int, int]:
        n = enc.numel
        gs = self.meta_int(enc, "group_size", 1, max(n, 1))
        return gs, -(-n // gs)

    def validate(self, enc: EncodedTensor) -> None:
        gs, groups = self._groups(enc)
        _check_range(enc)
        if enc.packed:
            self.meta_int(enc, "width_offset", 1, MAX_BITS)
            wbits = self.meta_int(enc, "width_bits", 0, 4)
            self.require(enc, "widths", (torch.uint8,), packed_nbytes(groups, wbits))
            if wbits == 0:  # one width for every group: no per-group widths to read
                expected = packed_nbytes(groups * gs, enc.meta["width_offset"])
            else:
                widths = self.packed_widths(enc)
                if groups and int(widths.max()) > MAX_BITS:
                    raise FormatError(f"'grouped' widths exceed {MAX_BITS} bits")
                # whole bytes per group and slice: the stream holds gs / 8 bytes per bit
                if gs % 8 == 0:
                    total = widths.sum(dtype=torch.int32 if groups < 2**26 else torch.int64)
                    expected = gs // 8 * int(total)
                else:
                    expected = grouped_nbytes(widths, gs)
            self.require(enc, "codes", (torch.uint8,), expected)
        else:
            self.require(enc, "codes", _CODE_DTYPES, groups * gs)
            widths = self.require(enc, "widths", (torch.uint8,), groups)
            if groups:
                low, high = (int(v) for v in torch.aminmax(widths))
                if low < 1 or high > MAX_BITS:
                    raise FormatError(f"'grouped' widths must lie in [1, {MAX_BITS}]")

    def pack(self, enc: EncodedTensor) -> EncodedTensor:
        gs, groups = self._groups(enc)
        widths = enc.tensors["widths"]
        if groups:
            low, high = (int(v) for v in torch.aminmax(widths))
        else:
            low = high = 1
        wbits = 0 if high == low else bits_needed(high - low)
        codes = _pack_grouped_codes(enc.tensors["codes"], widths, gs)
        packed_widths = (
            pack_bits(widths - low, wbits, check=False)
            if wbits
            else torch.empty(0, dtype=torch.uint8, device=widths.device)
        )
        meta = {"group_size": gs, "width_offset": low, "width_bits": wbits}
        tensors = {"codes": codes, "widths": packed_widths, "range": enc.tensors["range"]}
        return EncodedTensor(enc.scheme, enc.shape, enc.dtype, meta, tensors, packed=True)

    def packed_widths(self, enc: EncodedTensor) -> torch.Tensor:
        """The per-group widths of a packed encoding (uint8; computed once per encoding)."""
        cached = enc.__dict__.get("_widths")
        if cached is not None:
            return cached
        widths = self._packed_widths(enc)
        object.__setattr__(enc, "_widths", widths)
        return widths

    def _packed_widths(self, enc: EncodedTensor) -> torch.Tensor:
        _, groups = self._groups(enc)
        offset, wbits = enc.meta["width_offset"], enc.meta["width_bits"]
        device = enc.tensors["codes"].device
        if wbits:
            widths = unpack_bits(enc.tensors["widths"], wbits, groups, dtype=torch.uint8) + offset
        else:
            widths = torch.full((groups,), offset, dtype=torch.uint8, device=device)
        return widths

    def unpack(self, enc: EncodedTensor) -> EncodedTensor:
        gs, groups = self._groups(enc)
        widths = self.packed_widths(enc)
        top = int(widths.max()) if groups else 1
        codes = unpack_groups(enc.tensors["codes"], widths, gs, dtype=codes_dtype(top))
        meta = {"group_size": gs}
        tensors = {"codes": codes, "widths": widths, "range": enc.tensors["range"]}
        return EncodedTensor(enc.scheme, enc.shape, enc.dtype, meta, tensors, packed=False)

    def _bucket_values(
        self,
        enc: EncodedTensor,
        flat: torch.Tensor,
        order: torch.Tensor,
        buckets: list[tuple[int, int]],
    ) -> None:
        """Decode a packed encoding with several widths into ``flat``, bucket by bucket.

        Each bucket's codes are decoded in stream order with the bucket's own step
        (the element-wise operations of :func:`_affine_values`, so bit-identical);
        one gather of rows then puts every group back in place.
        """
        gs, groups = self._groups(enc)
        n = enc.numel
        rng = enc.tensors["range"]
        lo = rng[0]
        steps = _group_table(rng, numerator=False)
        padded = groups * gs
        stream = torch.empty(padded, dtype=flat.dtype, device=flat.device)
        packed = enc.tensors["codes"]
        start = offset = 0
        for width, count in buckets:
            size = packed_nbytes(count * gs, width)
            chunk = packed[start : start + size]
            start += size
            values = stream[offset : offset + count * gs]
            offset += count * gs
            step = steps[width]
            if _table_decodable(chunk, width, count * gs):

                def finish(v: torch.Tensor, s: torch.Tensor = step) -> None:
                    v.mul_(s).add_(lo)

                levels = _level_values(width, flat.device, flat.dtype, finish)
                _table_values(chunk, width, levels, values)
            else:
                _code_floats(chunk, width, count * gs, values)
                values.mul_(step).add_(lo)
        target = flat if padded == n else torch.empty_like(stream)
        dst = _as_rows(target.view(groups, gs))
        src = _as_rows_like(stream.view(groups, gs), dst)
        torch.index_select(src, 0, _inverse(order.to(flat.device)), out=dst)
        if target is not flat:
            flat.copy_(target[:n])

    def decode_into(self, enc: EncodedTensor, out: torch.Tensor) -> torch.Tensor:
        return self.decode(enc, out=out)

    def _kernel_fits(self, enc: EncodedTensor) -> bool:
        """Whether :func:`optiquant.quant.kernels.decode_grouped` decodes ``enc``."""
        return (
            enc.meta["group_size"] % 8 == 0
            and compute_dtype(enc.dtype) == torch.float32
            and _kernel_ready(enc.tensors["codes"], enc.numel, vector=True)
        )

    def _kernel_values(self, enc: EncodedTensor, flat: torch.Tensor) -> None:
        """Decode the packed ``enc`` into ``flat`` with the grouped vector kernel."""
        rng = enc.tensors["range"].to(torch.float32)
        kernels.decode_grouped(
            enc.tensors["codes"].numpy(),
            self.packed_widths(enc).contiguous().numpy(),
            enc.meta["group_size"],
            _group_table(rng, numerator=False).contiguous().numpy(),
            float(rng[0]),
            flat.numpy(),
        )

    def decode(self, enc: EncodedTensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if enc.packed and enc.numel:
            if enc.meta["width_bits"] == 0:  # one width: no per-group widths needed
                order, buckets = None, [(enc.meta["width_offset"], self._groups(enc)[1])]
            else:
                if self._kernel_fits(enc):
                    return _decode_with(enc, out, lambda flat: self._kernel_values(enc, flat))
                order, buckets = _buckets(self.packed_widths(enc))
            if order is not None:
                return _decode_with(
                    enc, out, lambda flat: self._bucket_values(enc, flat, order, buckets)
                )
            width, count = buckets[0]
            gs = enc.meta["group_size"]
            if enc.numel == count * gs and _table_decodable(enc.tensors["codes"], width, enc.numel):
                rng = enc.tensors["range"]
                step = _group_table(rng, numerator=False)[width]

                def fill(flat: torch.Tensor) -> None:
                    values = _level_values(
                        width, flat.device, flat.dtype, lambda v: v.mul_(step).add_(rng[0])
                    )
                    _table_values(enc.tensors["codes"], width, values, flat)

                return _decode_with(enc, out, fill)
            if self._kernel_fits(enc):
                return _decode_with(enc, out, lambda flat: self._kernel_values(enc, flat))
        enc = enc.unpack()
        t = enc.tensors
        gs = enc.meta["group_size"]
        return decode_grouped_codes(
            t["codes"], t["widths"], t["range"], gs, enc.shape, enc.dtype, out=out
        )


# ------------------------------------------------------------------------------------ lsq
def lsq_bounds(bits: int) -> tuple[int, int]:
    """The signed integer range ``(-2**(b-1), 2**(b-1) - 1)`` of LSQ codes.

    >>> lsq_bounds(4), lsq_bounds(1)
    ((-8, 7), (-1, 0))
    """
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def encode_lsq(
    weight: torch.Tensor, scale: torch.Tensor, bits: int, name: str = "weight"
) -> EncodedTensor:
    """Symmetric signed codes of ``weight`` for step size ``scale`` (unpacked encoding).

    >>> enc = encode_lsq(torch.tensor([-1.0, 0.1, 0.4, 9.0]), torch.tensor(0.25), 3)
    >>> enc.tensors["codes"].tolist(), enc.decode().tolist()
    ([0, 4, 6, 7], [-1.0, 0.0, 0.5, 0.75])
    """
    _check_weight(weight, name)
    _finite_range(weight, name)
    cdt = compute_dtype(weight.dtype)
    s = scale.detach().to(cdt).reshape(())
    if not bool(torch.isfinite(s)) or not bool(s > 0):
        raise ValueError(f"{name}: the LSQ step size must be finite and > 0, got {float(s)}")
    qn, qp = lsq_bounds(bits)
    flat = weight.detach().reshape(-1)
    n = flat.numel()
    codes = torch.empty(n, dtype=codes_dtype(bits), device=flat.device)
    x = _kernel_input(flat)
    if x is not None and cdt == torch.float32:
        kernels.lsq_codes(x.numpy(), float(s), qn, qp, codes.numpy())
    else:
        step = _chunk(n, 1, flat.device)
        buf = torch.empty(min(step, n), dtype=cdt, device=flat.device)
        for start in range(0, n, step):
            b = buf[: min(n, start + step) - start]
            b.copy_(flat[start : start + step])
            b.div_(s).clamp_(qn, qp).round_().sub_(qn)
            codes[start : start + step] = b
    return EncodedTensor(
        "lsq", tuple(weight.shape), weight.dtype, {"bits": bits}, {"codes": codes, "scale": s}
    )


def decode_lsq_codes(
    codes: torch.Tensor,
    scale: torch.Tensor,
    bits: int,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(codes - 2**(bits-1)) * scale`` with ``shape`` and ``dtype`` (into ``out``).

    >>> codes = torch.tensor([0, 4, 7], dtype=torch.uint8)
    >>> decode_lsq_codes(codes, torch.tensor(0.5), 3, (3,), torch.float32)
    tensor([-2.0000,  0.0000,  1.5000])
    """
    qn, _ = lsq_bounds(bits)

    def fill(flat: torch.Tensor) -> None:
        n = codes.numel()
        step = _chunk(n, 1, flat.device)
        for start in range(0, n, step):
            o = flat[start : start + step]
            o.copy_(codes[start : start + step])
            o.add_(qn).mul_(scale)

    enc_like = EncodedTensor("lsq", shape, dtype, {}, {"codes": codes})
    return _decode_with(enc_like, out, fill)


class LSQCodec(_SingleWidthCodec):
    """Symmetric codes with one learned step size (``tensors["scale"]``).

    >>> enc = encode_lsq(torch.tensor([-1.0, 0.5, 0.75]), torch.tensor(0.25), 3)
    >>> LSQCodec().decode(LSQCodec().pack(enc)).tolist()
    [-1.0, 0.5, 0.75]
    """

    scheme = "lsq"
    side = "scale"

    def validate(self, enc: EncodedTensor) -> None:
        bits = self.meta_int(enc, "bits", 1, MAX_BITS)
        scale = self.require(enc, "scale", _RANGE_DTYPES, 1)
        if not bool(torch.isfinite(scale).all()):
            raise FormatError("'lsq' scale is not finite")
        self.require_codes(enc, bits)

    def level_map(self, enc: EncodedTensor, bits: int) -> Callable[[torch.Tensor], object]:
        qn, _ = lsq_bounds(bits)
        step = enc.tensors["scale"].reshape(())
        return lambda v: v.add_(qn).mul_(step)

    def decode_codes(self, enc: EncodedTensor, out: torch.Tensor | None) -> torch.Tensor:
        scale = enc.tensors["scale"].reshape(())
        t = enc.tensors
        return decode_lsq_codes(t["codes"], scale, enc.meta["bits"], enc.shape, enc.dtype, out=out)


for _codec in (FloatCodec(), UniformCodec(), GroupedCodec(), LSQCodec()):
    register_codec(_codec)
