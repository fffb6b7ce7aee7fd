"""AVX-512 vector steps for the compiled kernels of :mod:`optiquant.quant.kernels`.

numba's compiler turns simple loops into vector code, but not table lookups
(it will not emit gathers on current Intel CPUs) nor the per-lane shifts that
pull codes out of packed words. Each function here does one 16-lane step of
that work in explicit LLVM vector code, for numba-compiled callers:

* :func:`encode16` maps 16 float32 values to their codes (grid unit, clamp,
  cell, one table lookup, truncated sum), the same arithmetic as the scalar loop;
* :func:`pack16` shifts up to 16 codes into place and ORs them into one word;
* :func:`decode16` cuts 16 codes out of up to five packed words and looks up
  their 32-bit values; for 8-bit codes, ``decode16_bytes`` reads them as bytes
  and ``pack16_bytes`` writes them so.

For other modules: ``noise_forward16``/``noise_backward16_*`` apply and reduce
DiffQ's table noise (:mod:`optiquant.quant.noise`), ``decode16_stream_*`` decode
the low-bits-first byte streams of :func:`optiquant.io.pack_bits`, and
``extremes_scan`` finds per-lane minima and maxima with their positions,
``fingerprint_scan`` keeps the per-lane running sums of a content fingerprint,
and ``load_le64``/``pdep64``/``store8_affine`` decode DiffQ's grouped codes one
unit of eight at a time, ``grouped8`` eight units at once (with AVX-512BW and VBMI as
well: :func:`byte_steps_supported`).

Lookups use a register permute for tables of at most 16 or 32 entries and a
hardware gather otherwise (one variant per ``mode``: :data:`PERM16`,
:data:`PERM32`, :data:`GATHER`). They need AVX-512F on the machine numba
compiles for; :func:`supported` says whether that holds, and the kernels fall
back to their scalar loops when it does not.
"""

from __future__ import annotations

import os
from typing import Any

try:  # optional: the ``fast`` extra
    import llvmlite.binding as _llvm
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - depends on the installation
    numba = None  # type: ignore[assignment]

__all__ = ["GATHER", "PERM16", "PERM32", "lookup_mode", "supported"]

PERM16, PERM32, GATHER = 0, 1, 2
"""Lookup variants: one register permute, a two-register permute, a gather."""


def lookup_mode(entries: int) -> int:
    """The lookup variant for a table of ``entries`` 32-bit values.

    >>> lookup_mode(16), lookup_mode(20), lookup_mode(600)
    (0, 1, 2)
    """
    return PERM16 if entries <= 16 else PERM32 if entries <= 32 else GATHER


def _host_has_avx512() -> bool:
    switch = os.environ.get("OPTIQUANT_SIMD", "1").strip().lower()
    if numba is None or switch in ("0", "false", "no"):
        return False
    config = numba.config
    if getattr(config, "CPU_NAME", None) is not None or getattr(config, "CPU_FEATURES", None):
        return False  # numba compiles for another target than this machine
    try:
        return bool(_llvm.get_host_cpu_features().get("avx512f", False))
    except RuntimeError:  # pragma: no cover - host features unknown
        return False


_SUPPORTED = _host_has_avx512()


def _host_has(*features: str) -> bool:
    try:
        found = _llvm.get_host_cpu_features()
    except RuntimeError:  # pragma: no cover - host features unknown
        return False
    return all(found.get(name, False) for name in features)


_BYTE_STEPS = _SUPPORTED and _host_has("avx512bw", "avx512vbmi")


def supported() -> bool:
    """Whether the vector steps can run here (numba installed, AVX-512F, host target).

    ``OPTIQUANT_SIMD=0`` in the environment (read at import) switches them off.

    >>> isinstance(supported(), bool)
    True
    """
    return _SUPPORTED


def byte_steps_supported() -> bool:
    """Whether the steps that also need AVX-512BW and VBMI (per-byte bit fields:
    ``grouped8``) can run here, on top of :func:`supported`.

    >>> byte_steps_supported() <= supported()
    True
    """
    return _BYTE_STEPS


if numba is not None:
    _I1, _I8, _I32, _I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
    _F32 = ir.FloatType()
    _V16I32, _V16I64 = ir.VectorType(_I32, 16), ir.VectorType(_I64, 16)
    _V8I64, _V8I32 = ir.VectorType(_I64, 8), ir.VectorType(_I32, 8)
    _V16F32 = ir.VectorType(_F32, 16)
    _LANES = ir.Constant(_V16I32, list(range(16)))

    def _ptr(context: Any, builder: Any, aryty: Any, ary: Any, index: Any, ty: Any) -> Any:
        """Pointer to ``ary[index]``, typed as a pointer to ``ty``."""
        arr = context.make_array(aryty)(context, builder, ary)
        return builder.bitcast(builder.gep(arr.data, [index]), ty.as_pointer())

    def _splat(builder: Any, value: Any, vty: Any) -> Any:
        """``value`` in every lane of a vector of type ``vty``."""
        empty = ir.Constant(ir.VectorType(value.type, 1), None)
        one = builder.insert_element(empty, value, _I32(0))
        zeros = ir.Constant(ir.VectorType(_I32, vty.count), [0] * vty.count)
        return builder.shuffle_vector(one, one, zeros)

    def _declare(builder: Any, name: str, ret: Any, args: list[Any]) -> Any:
        return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)

    _PREFETCH_WORDS = 512  # 64-bit words: 4 KiB, enough lead to cover memory latency

    def _prefetch(context: Any, builder: Any, aryty: Any, ary: Any, index: Any) -> None:
        """Hint the cache to load the line holding ``ary[index]`` (never faults, also
        past the end of ``ary``)."""
        arr = context.make_array(aryty)(context, builder, ary)
        ptr = builder.bitcast(builder.gep(arr.data, [index]), _I8.as_pointer())
        fetch = _declare(
            builder, "llvm.prefetch.p0", ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]
        )
        builder.call(fetch, [ptr, _I32(0), _I32(3), _I32(1)])

    def _lookup(context: Any, builder: Any, mode: int, tabty: Any, table: Any, idx: Any) -> Any:
        """``table[idx]`` for a <16 x i32> ``idx`` into a 32-bit table: <16 x i32>."""
        if mode == GATHER:
            gather = _declare(
                builder,
                "llvm.x86.avx512.mask.gather.dpi.512",
                _V16I32,
                [_V16I32, _I8.as_pointer(), _V16I32, ir.VectorType(_I1, 16), _I32],
            )
            base = _ptr(context, builder, tabty, table, _I64(0), _I8)
            every = ir.Constant(ir.VectorType(_I1, 16), [1] * 16)
            return builder.call(gather, [ir.Constant(_V16I32, None), base, idx, every, _I32(4)])
        first = builder.load(_ptr(context, builder, tabty, table, _I64(0), _V16I32), align=4)
        if mode == PERM16:
            perm = _declare(builder, "llvm.x86.avx512.permvar.si.512", _V16I32, [_V16I32, _V16I32])
            return builder.call(perm, [first, idx])
        second = builder.load(_ptr(context, builder, tabty, table, _I64(16), _V16I32), align=4)
        perm2 = _declare(
            builder, "llvm.x86.avx512.vpermi2var.d.512", _V16I32, [_V16I32, _V16I32, _V16I32]
        )
        return builder.call(perm2, [first, idx, second])

    def _lookup_store16(
        context: Any, builder: Any, mode: int, tab: tuple[Any, Any], codes: Any,
        out: tuple[Any, Any], o: Any, stream: Any,
    ) -> None:  # fmt: skip
        """``out[o:o+16] = table[codes]`` for the (type, value) pairs ``tab`` and ``out``;
        where the i1 ``stream`` is set, as a 64-byte aligned streaming store (it skips
        reading the cache line it overwrites)."""
        vals = _lookup(context, builder, mode, tab[0], tab[1], codes)
        _store16(builder, vals, _ptr(context, builder, out[0], out[1], o, _V16I32), stream)

    def _store16(builder: Any, vals: Any, ptr: Any, stream: Any) -> None:
        """``*ptr = vals`` (16 lanes); where the i1 ``stream`` is set, as a streaming
        store (``ptr`` 64-byte aligned)."""
        with builder.if_else(stream) as (streaming, plain):
            with streaming:
                store = builder.store(vals, ptr, align=64)
                store.set_metadata("nontemporal", builder.module.add_metadata([_I32(1)]))
            with plain:
                builder.store(vals, ptr, align=4)

    def _make_encode16(mode: int) -> Any:
        @intrinsic
        def encode16(typingctx, x, i, a, b, top, table, code, j):  # type: ignore[no-untyped-def]
            """``code[j:j+16] = int(table[cell(u)] + u)``, ``u = clamp(x[i:i+16] * a + b)``."""
            sig = types.void(
                x, types.intp, types.float32, types.float32, types.float32, table, code, types.intp
            )

            def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
                xv, iv, av, bv, topv, tab, cod, jv = args
                vals = builder.load(
                    _ptr(context, builder, signature.args[0], xv, iv, _V16F32), align=4
                )
                # two roundings, as in the scalar loop
                u = builder.fmul(vals, _splat(builder, av, _V16F32))
                u = builder.fadd(u, _splat(builder, bv, _V16F32))
                zero = ir.Constant(_V16F32, [0.0] * 16)
                u = builder.select(builder.fcmp_ordered("<", u, zero), zero, u)
                topw = _splat(builder, topv, _V16F32)
                u = builder.select(builder.fcmp_ordered(">", u, topw), topw, u)
                cell = builder.fptosi(u, _V16I32)
                t = builder.bitcast(
                    _lookup(context, builder, mode, signature.args[5], tab, cell), _V16F32
                )
                codes = builder.fptosi(builder.fadd(t, u), _V16I32)
                builder.store(
                    codes, _ptr(context, builder, signature.args[6], cod, jv, _V16I32), align=4
                )
                return context.get_dummy_value()

            return sig, codegen

        return encode16

    def _make_decode16(mode: int) -> Any:
        @intrinsic
        def decode16(typingctx, words, w, woff, shift, p, mask, table, out, o, stream):  # type: ignore[no-untyped-def]
            """``out[o:o+16] = table[(words[w + woff[p+l]] >> shift[p+l]) & mask]``, l < 16.

            ``words[w:w+8]`` must exist; ``woff`` entries lie in ``[0, 8)``. With
            ``stream`` true, ``out[o]`` must be 64-byte aligned (a streaming store).
            """
            sig = types.void(
                words,
                types.intp,
                woff,
                shift,
                types.intp,
                types.uint64,
                table,
                out,
                types.intp,
                types.boolean,
            )

            def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
                wds, wv, wof, shf, pv, mk, tab, outv, ov, stream = args
                eight = builder.load(
                    _ptr(context, builder, signature.args[0], wds, wv, _V8I64), align=8
                )
                offs = builder.load(
                    _ptr(context, builder, signature.args[2], wof, pv, _V16I32), align=4
                )
                perm = _declare(builder, "llvm.x86.avx512.permvar.di.512", _V8I64, [_V8I64, _V8I64])
                halves = []
                for start in (0, 8):
                    sel = builder.shuffle_vector(
                        offs, offs, ir.Constant(_V8I32, list(range(start, start + 8)))
                    )
                    halves.append(builder.call(perm, [eight, builder.zext(sel, _V8I64)]))
                lanes = builder.shuffle_vector(
                    halves[0], halves[1], ir.Constant(_V16I32, list(range(16)))
                )
                sh = builder.load(
                    _ptr(context, builder, signature.args[3], shf, pv, _V16I64), align=8
                )
                codes = builder.and_(builder.lshr(lanes, sh), _splat(builder, mk, _V16I64))
                aty = signature.args
                small = builder.trunc(codes, _V16I32)
                _lookup_store16(
                    context, builder, mode, (aty[6], tab), small, (aty[7], outv), ov, stream
                )
                return context.get_dummy_value()

            return sig, codegen

        return decode16

    @intrinsic
    def _pack16(typingctx, code, base, lanes, shift, s):  # type: ignore[no-untyped-def]
        """OR of ``code[base+l] << shift[s+l]`` over the first ``lanes`` lanes (uint64).

        Reads 16 codes whatever ``lanes`` is; ``shift`` entries must be below 64.
        """
        sig = types.uint64(code, types.intp, types.intp, shift, types.intp)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            cod, bv, nl, shf, sv = args
            cv = builder.load(_ptr(context, builder, signature.args[0], cod, bv, _V16I32), align=4)
            keep = builder.icmp_unsigned(
                "<", _LANES, _splat(builder, builder.trunc(nl, _I32), _V16I32)
            )
            cv = builder.select(keep, cv, ir.Constant(_V16I32, [0] * 16))
            sh = builder.load(_ptr(context, builder, signature.args[3], shf, sv, _V16I64), align=8)
            shifted = builder.shl(builder.zext(cv, _V16I64), sh)
            reduce_or = _declare(builder, "llvm.vector.reduce.or.v16i64", _I64, [_V16I64])
            return builder.call(reduce_or, [shifted])

        return sig, codegen

    _REVERSE8 = ir.Constant(ir.VectorType(_I32, 16), [7 - i % 8 + 8 * (i // 8) for i in range(16)])

    def _make_decode16_bytes(mode: int) -> Any:
        @intrinsic
        def decode16_bytes(typingctx, words, w, table, out, o, stream):  # type: ignore[no-untyped-def]
            """``out[o:o+16] = table[c]`` for the sixteen 8-bit codes of ``words[w:w+2]``
            (``stream``: as in ``decode16``)."""
            sig = types.void(words, types.intp, table, out, types.intp, types.boolean)

            def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
                wds, wv, tab, outv, ov, stream = args
                v16i8 = ir.VectorType(_I8, 16)
                raw = builder.load(
                    _ptr(context, builder, signature.args[0], wds, wv, v16i8), align=1
                )
                codes = builder.zext(builder.shuffle_vector(raw, raw, _REVERSE8), _V16I32)
                aty = signature.args
                _lookup_store16(
                    context, builder, mode, (aty[2], tab), codes, (aty[3], outv), ov, stream
                )
                return context.get_dummy_value()

            return sig, codegen

        return decode16_bytes

    @intrinsic
    def _pack16_bytes(typingctx, code, i, out, w):  # type: ignore[no-untyped-def]
        """``out[w:w+2]`` holds the 8-bit codes ``code[i:i+16]``, first code highest."""
        sig = types.void(code, types.intp, out, types.intp)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            cod, iv, outv, wv = args
            cv = builder.load(_ptr(context, builder, signature.args[0], cod, iv, _V16I32), align=4)
            v16i8 = ir.VectorType(_I8, 16)
            small = builder.trunc(cv, v16i8)
            builder.store(
                builder.shuffle_vector(small, small, _REVERSE8),
                _ptr(context, builder, signature.args[2], outv, wv, v16i8),
                align=1,
            )
            return context.get_dummy_value()

        return sig, codegen

    _HASH_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)

    def _mix32(builder: Any, x: Any) -> Any:
        """The 32-bit integer finaliser of :func:`optiquant.quant.noise.hash_index`, per lane."""
        vty = x.type

        def const(v: int) -> Any:
            return ir.Constant(vty, [v] * vty.count)

        for shift, mult in ((16, _HASH_MULTIPLIERS[0]), (15, _HASH_MULTIPLIERS[1])):
            x = builder.xor(x, builder.lshr(x, const(shift)))
            x = builder.mul(x, const(mult))
        return builder.xor(x, builder.lshr(x, const(16)))

    _PAIRS = ir.Constant(_V16I32, [lane // 2 + 8 * (lane % 2) for lane in range(16)])

    def _noise16(context: Any, builder: Any, i: Any, k1: Any, k2: Any, tabty: Any, tab: Any) -> Any:
        """``table[index(i + l)]`` for lanes ``l < 16`` (``i`` even): <16 x float>.

        One hash per pair of samples: its top half indexes the even one, its
        bottom half the odd one.
        """
        lanes8 = ir.Constant(_V8I32, list(range(8)))
        pair = builder.lshr(builder.trunc(i, _I32), _I32(1))
        counter = builder.add(_splat(builder, pair, _V8I32), lanes8)
        x = _mix32(builder, builder.xor(counter, _splat(builder, builder.trunc(k1, _I32), _V8I32)))
        x = _mix32(builder, builder.add(x, _splat(builder, builder.trunc(k2, _I32), _V8I32)))
        high = builder.lshr(x, ir.Constant(_V8I32, [16] * 8))
        low = builder.and_(x, ir.Constant(_V8I32, [0xFFFF] * 8))
        idx = builder.shuffle_vector(high, low, _PAIRS)
        return builder.bitcast(_lookup(context, builder, GATHER, tabty, tab, idx), _V16F32)

    def _group_scales(
        context: Any, builder: Any, aty: Any, amp: Any, groups: Any, g0: Any, offs: Any, row: Any
    ) -> Any:
        """``amp[g0 + offs[16 row + l]]`` per lane (offsets below 16), read without a
        gather: a masked load of ``amp[g0:g0+16]`` (lanes past ``groups`` stay unread)
        and one permute."""
        left = builder.trunc(builder.sub(groups, g0), _I32)
        mask = builder.icmp_signed("<", _LANES, _splat(builder, left, _V16I32))
        masked_load = _declare(
            builder,
            "llvm.masked.load.v16f32.p0",
            _V16F32,
            [_V16F32.as_pointer(), _I32, ir.VectorType(_I1, 16), _V16F32],
        )
        src = _ptr(context, builder, aty[0], amp, g0, _V16F32)
        near = builder.call(masked_load, [src, _I32(4), mask, ir.Constant(_V16F32, None)])
        start = builder.mul(row, ir.Constant(row.type, 16))
        off = builder.load(_ptr(context, builder, aty[1], offs, start, _V16I32), align=4)
        perm = _declare(builder, "llvm.x86.avx512.permvar.sf.512", _V16F32, [_V16F32, _V16I32])
        return builder.call(perm, [near, off])

    @intrinsic
    def _noise_forward16(typingctx, w, i, amp, groups, offs, row, g0, k1, k2, table, out):  # type: ignore[no-untyped-def]
        """``out[i+l] = w[i+l] + amp[g0 + offs[16 row + l]] * noise(i+l)``, ``l < 16``
        (a fused multiply-add)."""
        sig = types.void(
            w, types.intp, amp, types.intp, offs, types.intp, types.intp, types.int64,
            types.int64, table, out,
        )  # fmt: skip

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            wv, iv, ampv, grp, offv, rowv, g0v, k1v, k2v, tab, outv = args
            aty = signature.args
            eps = _noise16(context, builder, iv, k1v, k2v, aty[9], tab)
            scale = _group_scales(context, builder, (aty[2], aty[4]), ampv, grp, g0v, offv, rowv)
            vals = builder.load(_ptr(context, builder, aty[0], wv, iv, _V16F32), align=4)
            fma = _declare(builder, "llvm.fma.v16f32", _V16F32, [_V16F32] * 3)
            res = builder.call(fma, [eps, scale, vals])  # one rounding, as torch's addcmul
            builder.store(res, _ptr(context, builder, aty[10], outv, iv, _V16F32), align=4)
            return context.get_dummy_value()

        return sig, codegen

    def _make_noise_backward16(group: int) -> Any:
        """The backward step for groups of ``group`` (1, 2, 4, 8: aligned groups, their
        sums stored at ``sums[g0:]``; 16: every lane in one group, its sum returned)."""

        @intrinsic
        def noise_backward16(typingctx, grad, i, k1, k2, table, gout, sums, g0):  # type: ignore[no-untyped-def]
            """``gout[i:i+16] = grad[i:i+16]`` and the group sums of ``grad * noise``."""
            ret = types.float32 if group == 16 else types.void
            sig = ret(grad, types.intp, types.int64, types.int64, table, gout, sums, types.intp)

            def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
                gv, iv, k1v, k2v, tab, goutv, sumv, g0v = args
                aty = signature.args
                eps = _noise16(context, builder, iv, k1v, k2v, aty[4], tab)
                vals = builder.load(_ptr(context, builder, aty[0], gv, iv, _V16F32), align=4)
                builder.store(vals, _ptr(context, builder, aty[5], goutv, iv, _V16F32), align=4)
                prod = builder.fmul(vals, eps)
                step = 1
                while step < group:  # butterfly: every lane ends with its group's sum
                    swap = ir.Constant(_V16I32, [lane ^ step for lane in range(16)])
                    prod = builder.fadd(prod, builder.shuffle_vector(prod, prod, swap))
                    step *= 2
                if group == 16:
                    return builder.extract_element(prod, _I32(0))
                count = 16 // group
                vty = ir.VectorType(_F32, count)
                firsts = ir.Constant(ir.VectorType(_I32, count), list(range(0, 16, group)))
                picked = builder.shuffle_vector(prod, prod, firsts)
                builder.store(picked, _ptr(context, builder, aty[6], sumv, g0v, vty), align=4)
                return context.get_dummy_value()

            return sig, codegen

        return noise_backward16

    @intrinsic
    def _extremes_scan(typingctx, x, steps, lows, highs):  # type: ignore[no-untyped-def]
        """Per-lane minima and maxima of ``x[:16 * steps]`` (16 lanes, first occurrences).

        ``lows`` and ``highs`` (float32 values then int32 positions, 32 entries each,
        as float32 arrays holding the positions' bits) start from the first step and
        end with each lane's extreme and its position; ``lows[32]`` ends nonzero if
        a NaN was seen.
        """
        sig = types.void(x, types.intp, lows, highs)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            xv, steps_v, lows_v, highs_v = args
            aty = signature.args
            slots = []
            for arr, ty in ((lows_v, aty[2]), (highs_v, aty[3])):
                val_ptr = _ptr(context, builder, ty, arr, _I64(0), _V16F32)
                pos_ptr = _ptr(context, builder, ty, arr, _I64(16), _V16I32)
                val = cgutils.alloca_once_value(builder, builder.load(val_ptr, align=4))
                pos = cgutils.alloca_once_value(builder, builder.load(pos_ptr, align=4))
                slots.append((val_ptr, pos_ptr, val, pos))
            seen = cgutils.alloca_once_value(builder, ir.Constant(_V16I32, [0] * 16))
            with cgutils.for_range(builder, steps_v) as loop:
                start = builder.mul(loop.index, ir.Constant(loop.index.type, 16))
                v = builder.load(_ptr(context, builder, aty[0], xv, start, _V16F32), align=4)
                here = builder.add(_splat(builder, builder.trunc(start, _I32), _V16I32), _LANES)
                for (_, _, val, pos), op in zip(slots, ("<", ">")):
                    cur = builder.load(val)
                    better = builder.fcmp_ordered(op, v, cur)
                    builder.store(builder.select(better, v, cur), val)
                    builder.store(builder.select(better, here, builder.load(pos)), pos)
                nan = builder.zext(builder.fcmp_unordered("uno", v, v), _V16I32)
                builder.store(builder.or_(builder.load(seen), nan), seen)
            for val_ptr, pos_ptr, val, pos in slots:
                builder.store(builder.load(val), val_ptr, align=4)
                builder.store(builder.load(pos), pos_ptr, align=4)
            reduce_or = _declare(builder, "llvm.vector.reduce.or.v16i32", _I32, [_V16I32])
            flag = builder.uitofp(builder.call(reduce_or, [builder.load(seen)]), _F32)
            builder.store(flag, _ptr(context, builder, aty[2], lows_v, _I64(32), _F32))
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def _fingerprint_scan(typingctx, v, steps, sums):  # type: ignore[no-untyped-def]
        """Running sums over the int64 ``v[:16 * steps]`` seen as rows of 16 lanes.

        ``sums`` (uint64, 32 entries) holds per lane ``l`` the sum ``sums[l]`` of
        the lane's values so far and ``sums[16 + l]`` the sum of those running
        sums; both wrap modulo ``2**64``. Position-weighted sums follow from them
        without a multiplication per value.
        """
        sig = types.void(v, types.intp, sums)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            vv, steps_v, sums_v = args
            aty = signature.args
            ptrs = [_ptr(context, builder, aty[2], sums_v, _I64(8 * k), _V8I64) for k in range(4)]
            slots = [cgutils.alloca_once_value(builder, builder.load(p, align=8)) for p in ptrs]
            with cgutils.for_range(builder, steps_v) as loop:
                start = builder.mul(loop.index, ir.Constant(loop.index.type, 16))
                for half in range(2):  # ask for the lines 4 KiB ahead now (memory-bound scan)
                    ahead = builder.add(start, ir.Constant(start.type, _PREFETCH_WORDS + 8 * half))
                    _prefetch(context, builder, aty[0], vv, ahead)
                for half in range(2):
                    at = builder.add(start, ir.Constant(start.type, 8 * half))
                    x = builder.load(_ptr(context, builder, aty[0], vv, at, _V8I64), align=8)
                    acc = builder.add(builder.load(slots[half]), x)
                    builder.store(acc, slots[half])
                    builder.store(builder.add(builder.load(slots[2 + half]), acc), slots[2 + half])
            for p, slot in zip(ptrs, slots):
                builder.store(builder.load(slot), p, align=8)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def _load_le64(typingctx, data, b):  # type: ignore[no-untyped-def]
        """The eight bytes ``data[b:b+8]`` as one little-endian uint64 (any alignment)."""
        sig = types.uint64(data, types.intp)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            ptr = _ptr(context, builder, signature.args[0], args[0], args[1], _I64)
            return builder.load(ptr, align=1)

        return sig, codegen

    def _make_bmi64(op: str) -> Any:
        @intrinsic
        def bmi64(typingctx, x, mask):  # type: ignore[no-untyped-def]
            """BMI2 ``pdep`` (the low bits of ``x`` deposited, in order, at the set bits
            of ``mask``) or ``pext`` (the bits of ``x`` at the set bits of ``mask``,
            gathered in order into the low bits)."""
            sig = types.uint64(types.uint64, types.uint64)

            def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
                fn = _declare(builder, f"llvm.x86.bmi.{op}.64", _I64, [_I64, _I64])
                return builder.call(fn, list(args))

            return sig, codegen

        return bmi64

    @intrinsic
    def _store_le64(typingctx, data, b, value):  # type: ignore[no-untyped-def]
        """``data[b:b+8] = value`` as eight little-endian bytes (any alignment)."""
        sig = types.void(data, types.intp, types.uint64)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            ptr = _ptr(context, builder, signature.args[0], args[0], args[1], _I64)
            builder.store(args[2], ptr, align=1)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def _store8_affine(typingctx, low, high, step, base, out, o):  # type: ignore[no-untyped-def]
        """``out[o+j] = float(c_j) * step + base`` (two roundings) for the eight 16-bit
        codes ``c_j`` whose low bytes are the bytes of ``low`` and high bytes those of
        ``high`` (byte ``j`` for code ``j``)."""
        sig = types.void(types.uint64, types.uint64, types.float32, types.float32, out, types.intp)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            lo_v, hi_v, step_v, base_v, outv, ov = args
            v8i8, v8f32 = ir.VectorType(_I8, 8), ir.VectorType(_F32, 8)
            lo_b = builder.zext(builder.bitcast(lo_v, v8i8), _V8I32)
            hi_b = builder.zext(builder.bitcast(hi_v, v8i8), _V8I32)
            codes = builder.or_(lo_b, builder.shl(hi_b, ir.Constant(_V8I32, [8] * 8)))
            vals = builder.fmul(builder.sitofp(codes, v8f32), _splat(builder, step_v, v8f32))
            vals = builder.fadd(vals, _splat(builder, base_v, v8f32))
            builder.store(vals, _ptr(context, builder, signature.args[4], outv, ov, v8f32), align=4)
            return context.get_dummy_value()

        return sig, codegen

    def _permute_q(builder: Any, tab: tuple[Any, Any], idx: Any) -> Any:
        """``tab[idx]`` for a 16-entry qword table held in two <8 x i64> halves."""
        perm = _declare(
            builder, "llvm.x86.avx512.vpermi2var.q.512", _V8I64, [_V8I64, _V8I64, _V8I64]
        )
        return builder.call(perm, [tab[0], idx, tab[1]])

    @intrinsic
    def _grouped8(typingctx, data, tabs, uw, pw, ur, pr, steps, base, out, o, stream):  # type: ignore[no-untyped-def]
        """Decode eight units of eight codes of a grouped stream (see
        :func:`optiquant.quant.kernels.decode_grouped`): unit ``u < 8`` has width
        ``w = uw[pw+u]`` (1..16) and rank ``ur[pr+u]`` in its width's streams, and
        ``out[o+8u+j] = float(code_j) * steps[w-1] + base`` (two roundings).

        ``tabs`` (int64, 192 entries) holds per slice slot ``k < 4`` three 16-entry
        tables indexed by ``w - 1``: at ``48k`` the slice's stream start, with the
        log2 of its bytes per unit at bit 56 and a high-byte flag at bit 62; at
        ``48k+16`` the eight bit-offset controls that put each field in place in its
        byte (VBMI multishift); at ``48k+32`` the mask of those fields (0: no slice).
        Every read ``data[a:a+8]`` must lie inside ``data``. With ``stream`` true,
        ``out[o]`` must be 64-byte aligned (streaming stores)."""
        sig = types.void(
            data, tabs, uw, types.intp, ur, types.intp, steps, types.float32, out, types.intp,
            types.boolean,
        )  # fmt: skip

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            dv, tv, uwv, pwv, urv, prv, stv, basev, outv, ov, stream = args
            aty = signature.args
            v8i8, v64i8 = ir.VectorType(_I8, 8), ir.VectorType(_I8, 64)
            widths = builder.load(_ptr(context, builder, aty[2], uwv, pwv, v8i8), align=1)
            idx = builder.sub(builder.zext(widths, _V8I64), ir.Constant(_V8I64, [1] * 8))
            rank = builder.load(_ptr(context, builder, aty[4], urv, prv, _V8I64), align=8)

            def table(at: int) -> Any:
                halves = [
                    builder.load(
                        _ptr(context, builder, aty[1], tv, _I64(at + 8 * h), _V8I64), align=8
                    )
                    for h in (0, 1)
                ]
                return _permute_q(builder, (halves[0], halves[1]), idx)

            gather = _declare(
                builder,
                "llvm.x86.avx512.mask.gather.qpq.512",
                _V8I64,
                [_V8I64, _I8.as_pointer(), _V8I64, ir.VectorType(_I1, 8), _I32],
            )
            shift = _declare(builder, "llvm.x86.avx512.pmultishift.qb.512", v64i8, [v64i8, v64i8])
            base_ptr = _ptr(context, builder, aty[0], dv, _I64(0), _I8)
            zero = ir.Constant(_V8I64, [0] * 8)
            low, high = zero, zero
            for k in range(4):
                meta, ctrl, fmask = (table(48 * k + 16 * t) for t in range(3))
                start = builder.and_(meta, ir.Constant(_V8I64, [(1 << 56) - 1] * 8))
                log_adv = builder.and_(
                    builder.lshr(meta, ir.Constant(_V8I64, [56] * 8)), ir.Constant(_V8I64, [3] * 8)
                )
                addr = builder.add(start, builder.shl(rank, log_adv))
                present = builder.icmp_unsigned("!=", fmask, zero)
                raw = builder.call(gather, [zero, base_ptr, addr, present, _I32(1)])
                fields = builder.call(
                    shift, [builder.bitcast(ctrl, v64i8), builder.bitcast(raw, v64i8)]
                )
                fields = builder.and_(builder.bitcast(fields, _V8I64), fmask)
                is_high = builder.icmp_unsigned(
                    "!=", builder.and_(meta, ir.Constant(_V8I64, [1 << 62] * 8)), zero
                )
                high = builder.or_(high, builder.select(is_high, fields, zero))
                low = builder.or_(low, builder.select(is_high, zero, fields))
            # code (u, j): low byte low[8u + j], high byte high[8u + j]
            both = builder.shuffle_vector(
                builder.bitcast(low, v64i8),
                builder.bitcast(high, v64i8),
                ir.Constant(ir.VectorType(_I32, 128), [i // 2 + 64 * (i % 2) for i in range(128)]),
            )
            v64i32, v64f32 = ir.VectorType(_I32, 64), ir.VectorType(_F32, 64)
            codes = builder.zext(builder.bitcast(both, ir.VectorType(ir.IntType(16), 64)), v64i32)
            table16 = builder.load(_ptr(context, builder, aty[6], stv, _I64(0), _V16F32), align=4)
            idx16 = builder.shuffle_vector(
                builder.trunc(idx, _V8I32),
                builder.trunc(idx, _V8I32),
                ir.Constant(_V16I32, [i % 8 for i in range(16)]),
            )
            permps = _declare(
                builder, "llvm.x86.avx512.permvar.sf.512", _V16F32, [_V16F32, _V16I32]
            )
            unit_steps = builder.call(permps, [table16, idx16])
            steps64 = builder.shuffle_vector(
                unit_steps, unit_steps, ir.Constant(v64i32, [i // 8 for i in range(64)])
            )
            vals = builder.fmul(builder.sitofp(codes, v64f32), steps64)
            vals = builder.fadd(vals, _splat(builder, basev, v64f32))
            for q in range(4):
                part = builder.shuffle_vector(
                    vals, vals, ir.Constant(_V16I32, [16 * q + i for i in range(16)])
                )
                ptr = _ptr(context, builder, aty[8], outv, builder.add(ov, _I64(16 * q)), _V16F32)
                _store16(builder, part, ptr, stream)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def _fma32(typingctx, a, b, c):  # type: ignore[no-untyped-def]
        """``a * b + c`` in float32 with one rounding."""
        sig = types.float32(types.float32, types.float32, types.float32)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            fma = _declare(builder, "llvm.fma.f32", _F32, [_F32] * 3)
            return builder.call(fma, list(args))

        return sig, codegen

    def _make_decode16_stream(bits: int, mode: int) -> Any:
        @intrinsic
        def decode16_stream(typingctx, data, b, table, out, o, stream):  # type: ignore[no-untyped-def]
            """``out[o:o+16] = table[c]`` for the sixteen ``bits``-bit codes in bytes
            ``data[b:b+2*bits]`` of a low-bits-first stream (``bits`` in 1, 2, 4, 8).
            With ``stream`` true, ``out[o]`` must be 64-byte aligned (a streaming store)."""
            sig = types.void(data, types.intp, table, out, types.intp, types.boolean)

            def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
                dv, bv, tab, outv, ov, stream = args
                aty = signature.args
                nbytes = 2 * bits
                raw = builder.load(
                    _ptr(context, builder, aty[0], dv, bv, ir.VectorType(_I8, nbytes)), align=1
                )
                wide = builder.zext(raw, ir.VectorType(_I32, nbytes))
                which = ir.Constant(_V16I32, [lane * bits // 8 for lane in range(16)])
                lanes = builder.shuffle_vector(wide, wide, which)
                shifts = ir.Constant(_V16I32, [lane * bits % 8 for lane in range(16)])
                codes = builder.and_(
                    builder.lshr(lanes, shifts), ir.Constant(_V16I32, [(1 << bits) - 1] * 16)
                )
                _lookup_store16(
                    context, builder, mode, (aty[2], tab), codes, (aty[3], outv), ov, stream
                )
                return context.get_dummy_value()

            return sig, codegen

        return decode16_stream

    @intrinsic
    def _store_fence(typingctx):  # type: ignore[no-untyped-def]
        """Order the streaming stores issued so far before any later store."""
        sig = types.void()

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            builder.call(_declare(builder, "llvm.x86.sse.sfence", ir.VoidType(), []), [])
            return context.get_dummy_value()

        return sig, codegen

    # called from numba-compiled code only (typed as Any: numba supplies ``typingctx``)
    noise_forward16: Any = _noise_forward16
    extremes_scan: Any = _extremes_scan
    fingerprint_scan: Any = _fingerprint_scan
    load_le64: Any = _load_le64
    pdep64: Any = _make_bmi64("pdep")
    pext64: Any = _make_bmi64("pext")
    store_le64: Any = _store_le64
    store8_affine: Any = _store8_affine
    grouped8: Any = _grouped8
    fma32: Any = _fma32
    noise_backward16_1: Any = _make_noise_backward16(1)
    noise_backward16_2: Any = _make_noise_backward16(2)
    noise_backward16_4: Any = _make_noise_backward16(4)
    noise_backward16_8: Any = _make_noise_backward16(8)
    noise_backward16_16: Any = _make_noise_backward16(16)
    pack16: Any = _pack16
    pack16_bytes: Any = _pack16_bytes
    encode16_perm16: Any = _make_encode16(PERM16)
    encode16_perm32: Any = _make_encode16(PERM32)
    encode16_gather: Any = _make_encode16(GATHER)
    decode16_perm16: Any = _make_decode16(PERM16)
    decode16_perm32: Any = _make_decode16(PERM32)
    decode16_gather: Any = _make_decode16(GATHER)
    decode16_bytes_gather: Any = _make_decode16_bytes(GATHER)
    decode16_stream_1: Any = _make_decode16_stream(1, PERM16)
    decode16_stream_2: Any = _make_decode16_stream(2, PERM16)
    decode16_stream_4: Any = _make_decode16_stream(4, PERM16)
    decode16_stream_8: Any = _make_decode16_stream(8, GATHER)
    store_fence: Any = _store_fence
