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


def supported() -> bool:
    """Whether the vector steps can run here (numba installed, AVX-512F, host target).

    ``OPTIQUANT_SIMD=0`` in the environment (read at import) switches them off.

    >>> isinstance(supported(), bool)
    True
    """
    return _SUPPORTED


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
        def decode16(typingctx, words, w, woff, shift, p, mask, table, out, o):  # type: ignore[no-untyped-def]
            """``out[o:o+16] = table[(words[w + woff[p+l]] >> shift[p+l]) & mask]``, l < 16.

            ``words[w:w+8]`` must exist; ``woff`` entries lie in ``[0, 8)``.
            """
            sig = types.void(
                words, types.intp, woff, shift, types.intp, types.uint64, table, out, types.intp
            )

            def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
                wds, wv, wof, shf, pv, mk, tab, outv, ov = args
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
                vals = _lookup(
                    context, builder, mode, signature.args[6], tab, builder.trunc(codes, _V16I32)
                )
                builder.store(
                    vals, _ptr(context, builder, signature.args[7], outv, ov, _V16I32), align=4
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
        def decode16_bytes(typingctx, words, w, table, out, o):  # type: ignore[no-untyped-def]
            """``out[o:o+16] = table[c]`` for the sixteen 8-bit codes of ``words[w:w+2]``."""
            sig = types.void(words, types.intp, table, out, types.intp)

            def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
                wds, wv, tab, outv, ov = args
                v16i8 = ir.VectorType(_I8, 16)
                raw = builder.load(
                    _ptr(context, builder, signature.args[0], wds, wv, v16i8), align=1
                )
                codes = builder.zext(builder.shuffle_vector(raw, raw, _REVERSE8), _V16I32)
                vals = _lookup(context, builder, mode, signature.args[2], tab, codes)
                builder.store(
                    vals, _ptr(context, builder, signature.args[3], outv, ov, _V16I32), align=4
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

    # called from numba-compiled code only (typed as Any: numba supplies ``typingctx``)
    pack16: Any = _pack16
    pack16_bytes: Any = _pack16_bytes
    encode16_perm16: Any = _make_encode16(PERM16)
    encode16_perm32: Any = _make_encode16(PERM32)
    encode16_gather: Any = _make_encode16(GATHER)
    decode16_perm16: Any = _make_decode16(PERM16)
    decode16_perm32: Any = _make_decode16(PERM32)
    decode16_gather: Any = _make_decode16(GATHER)
    decode16_bytes_gather: Any = _make_decode16_bytes(GATHER)
