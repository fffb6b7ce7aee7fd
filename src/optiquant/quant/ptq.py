"""Post-training quantization of whole models with distributional codebooks.

Every quantized tensor is stored as a ``"distributional"``
:class:`~optiquant.quant.encoded.EncodedTensor`: dense-packed codes, the
codebook levels, a scale (and a location when it is not zero) per tensor or per
group, and optionally a few outliers kept exactly (their flat index and value).
The codec is registered, so states and files that hold such tensors decode with
no quantizer at hand, like every other scheme of :mod:`optiquant.quant`.

* :func:`encode_distributional` quantizes one tensor;
* :func:`compress_state_dict` quantizes a state dict and reports size and error
  per tensor (:class:`TensorReport`);
* :class:`DistributionalQuantizer` attaches to a model like the other quantizers
  (eval mode uses the quantized weights; ``get_quantized_state`` stores them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from optiquant.io.bitpack import packed_nbytes, unpack_bits
from optiquant.io.errors import FormatError
from optiquant.quant.base import BaseQuantizer, QuantizedParam
from optiquant.quant.codecs import encode_float, pack_codes
from optiquant.quant.config import QuantizerConfig, check_bits, register_config
from optiquant.quant.distributional import METHODS, dequantize, quantize
from optiquant.quant.encoded import Codec, EncodedTensor, register_codec

__all__ = [
    "SCHEME",
    "DistConfig",
    "DistributionalCodec",
    "DistributionalQuantizer",
    "TensorReport",
    "allocate_bits",
    "compress_state_dict",
    "encode_distributional",
    "tensor_report",
]

SCHEME = "distributional"
_SCALINGS = ("std", "absmax")
_PARAM_DTYPES = ("float16", "bfloat16", "float32", "log8")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@register_config
@dataclasses.dataclass(frozen=True)
class DistConfig(QuantizerConfig):
    """Options of :class:`DistributionalQuantizer` and :func:`compress_state_dict`.

    ``bits`` (1..16) per code; ``method`` one of
    :data:`~optiquant.quant.distributional.METHODS` (``"lloyd"``: the MSE-optimal
    codebook fitted to each tensor); ``group_size`` consecutive values share a
    scale (0: one per tensor); ``scaling`` ``"absmax"`` or ``"std"``;
    ``outliers`` is the fraction of values (largest deviations) stored exactly
    in ``param_dtype``; ``beta`` the range factor of the parametric methods
    (``None``: searched by MSE); ``param_dtype`` stores scales and locations
    (``"log8"``: group scales as 8-bit codes on a logarithmic grid, rounded up,
    plus two float64 numbers per tensor; locations then stay float16).

    >>> DistConfig(bits=3, group_size=64).bits_per_value_overhead()
    0.25
    >>> DistConfig(bits=3, group_size=64, param_dtype="log8").bits_per_value_overhead()
    0.125
    """

    kind: ClassVar[str] = "distributional"
    bits: int = 4
    method: str = "lloyd"
    group_size: int = 0
    scaling: str = "absmax"
    outliers: float = 0.0
    beta: float | None = None
    param_dtype: str = "float16"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "bits", check_bits(self.bits))
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        gs = self.group_size
        if isinstance(gs, bool) or not isinstance(gs, int) or gs < 0:
            raise ValueError(f"group_size must be an int >= 0 (0: per tensor), got {gs!r}")
        if self.scaling not in _SCALINGS:
            raise ValueError(f"scaling must be one of {_SCALINGS}, got {self.scaling!r}")
        out = self.outliers
        if isinstance(out, bool) or not isinstance(out, (int, float)) or not 0 <= out < 0.5:
            raise ValueError(f"outliers must be a fraction in [0, 0.5), got {out!r}")
        object.__setattr__(self, "outliers", float(out))
        if self.beta is not None:
            b = self.beta
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < math.inf:
                raise ValueError(f"beta must be a positive number or None, got {b!r}")
            object.__setattr__(self, "beta", float(b))
        if self.param_dtype not in _PARAM_DTYPES:
            raise ValueError(
                f"param_dtype must be one of {_PARAM_DTYPES}, got {self.param_dtype!r}"
            )

    def bits_per_value_overhead(self) -> float:
        """Bits per value spent on scales (and locations with ``std`` scaling)."""
        if not self.group_size:
            return 0.0
        per = {"float32": 32, "log8": 8}.get(self.param_dtype, 16)
        loc = 0 if self.scaling == "absmax" and self.method in ("lloyd", "uniform") else 16
        return (per + loc) / self.group_size


def _param_dtype(name: str) -> torch.dtype:
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(name, torch.float32)


class _Log8:
    """Rounds positive scales up onto ``exp(lo + code * step)``, code 1..255 (0: zero)."""

    def __init__(self) -> None:
        self.lo = 0.0
        self.step = 1.0
        self.code = torch.zeros(0, dtype=torch.uint8)

    def grid(self, scale: torch.Tensor) -> torch.Tensor:
        pos = scale[scale > 0]
        if pos.numel():
            lo, hi = math.log(float(pos.min())), math.log(float(pos.max()))
            self.lo, self.step = lo, (hi - lo) / 254.0 if hi > lo else 1.0
        t = (torch.log(scale.clamp(min=1e-300)) - self.lo) / self.step
        code = (torch.ceil(t - 1e-9) + 1).clamp(1, 255)
        return torch.where(scale > 0, code, torch.zeros_like(code)).to(torch.uint8)

    def value(self, code: torch.Tensor, rng: torch.Tensor) -> torch.Tensor:
        v = torch.exp(rng[0] + (code.double() - 1.0) * rng[1])
        return torch.where(code > 0, v, torch.zeros_like(v))

    def __call__(self, loc: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.grid(scale.double())
        self.code = code
        rng = torch.tensor([self.lo, self.step], dtype=torch.float64, device=scale.device)
        return loc.to(torch.float16).double(), self.value(code, rng)


def _outlier_dtype(values: torch.Tensor, preferred: torch.dtype) -> torch.dtype:
    if preferred == torch.float16 and values.numel():
        if float(values.abs().max()) >= 65504.0:
            return torch.float32
    return preferred


def encode_distributional(
    weight: torch.Tensor, config: DistConfig | None = None, name: str = "weight"
) -> EncodedTensor:
    """Quantize one tensor to an (unpacked) ``"distributional"`` encoding.

    >>> w = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    >>> enc = encode_distributional(w, DistConfig(bits=4, group_size=64))
    >>> float(((enc.decode() - w) ** 2).mean() / w.var()) < 0.02
    True
    """
    cfg = config if config is not None else DistConfig()
    if not isinstance(weight, torch.Tensor) or weight.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected a floating point tensor, got {type(weight).__name__}")
    if weight.numel() == 0:
        raise ValueError(f"{name}: cannot quantize an empty tensor")
    flat = weight.detach().reshape(-1)
    lo, hi = torch.aminmax(flat)
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise ValueError(f"{name}: weights contain NaN or inf; cannot quantize")
    pdt = _param_dtype(cfg.param_dtype)
    tensors: dict[str, torch.Tensor] = {}
    m = math.ceil(cfg.outliers * flat.numel()) if cfg.outliers > 0 else 0
    dense = flat
    if m:
        work = flat.float() if flat.dtype != torch.float64 else flat
        center = work.mean()
        idx = torch.topk((work - center).abs(), m).indices.sort().values
        vals = flat[idx]
        vdt = _outlier_dtype(vals, pdt if pdt != torch.bfloat16 else torch.float16)
        dense = flat.clone()
        dense[idx] = center.to(flat.dtype)
        tensors["outlier_index"] = idx.to(torch.int32 if flat.numel() < 2**31 else torch.int64)
        tensors["outlier_value"] = vals.to(vdt)
    log8 = _Log8() if cfg.param_dtype == "log8" and cfg.group_size else None
    if log8 is not None:
        pdt = torch.float16
    q, info = quantize(
        dense,
        k=cfg.bits,
        dist=cfg.method,
        packbits=False,
        beta=cfg.beta,
        group_size=cfg.group_size or None,
        scaling=cfg.scaling,
        param_dtype=pdt,
        round_params=log8,
    )
    fitted = torch.as_tensor(info["scale"], dtype=torch.float64).reshape(-1)
    loc = torch.as_tensor(info["loc"], dtype=torch.float64).reshape(-1).to(pdt)
    if log8 is not None:
        tensors["scale_code"] = log8.code.to(weight.device)
        tensors["scale_range"] = torch.tensor([log8.lo, log8.step], dtype=torch.float64)
    else:
        scale = fitted.to(pdt)
        if not bool((scale.double().cpu() == fitted.cpu()).all()):
            loc = torch.as_tensor(info["loc"], dtype=torch.float64).reshape(-1).float()
            scale = fitted.float()
        tensors["scale"] = scale.to(weight.device)
    tensors["codes"] = q.reshape(-1)
    tensors["levels"] = info["levels"].to(torch.float32)
    if bool((loc != 0).any()):
        tensors["loc"] = loc.to(weight.device)
    tensors["levels"] = tensors["levels"].to(weight.device)
    meta = {
        "bits": cfg.bits,
        "n": int(info["n"]),
        "method": cfg.method,
        "dist": info["dist"],
        "beta": float(info["beta"]),
        "group_size": int(cfg.group_size),
    }
    return EncodedTensor(SCHEME, tuple(weight.shape), weight.dtype, meta, tensors)


class DistributionalCodec(Codec):
    """Codebook codes with per-tensor or per-group scales and exact outliers.

    Registered under the scheme ``"distributional"``; encodings find it by name.

    >>> enc = encode_distributional(torch.randn(8, 8), DistConfig(bits=3, min_size=0))
    >>> type(enc.codec).__name__, enc.pack().tensors["codes"].numel()
    ('DistributionalCodec', 24)
    """

    scheme = SCHEME

    def _groups(self, enc: EncodedTensor) -> int:
        gs = enc.meta.get("group_size", 0)
        if isinstance(gs, bool) or not isinstance(gs, int) or gs < 0:
            raise FormatError(f"{SCHEME!r} meta 'group_size' must be an int >= 0, got {gs!r}")
        return -(-enc.numel // gs) if gs else 1

    def validate(self, enc: EncodedTensor) -> None:
        bits = self.meta_int(enc, "bits", 1, 16)
        n = self.meta_int(enc, "n", 1, 1 << 16)
        if n > 1 << bits:
            raise FormatError(f"{SCHEME!r} has n={n} levels, more than {bits} bits hold")
        groups = self._groups(enc)
        levels = self.require(enc, "levels", (torch.float32, torch.float64), n)
        if not bool(torch.isfinite(levels).all()):
            raise FormatError(f"{SCHEME!r} levels must be finite")
        fl = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        if "scale_code" in enc.tensors:
            self.require(enc, "scale_code", (torch.uint8,), groups)
            rng = self.require(enc, "scale_range", (torch.float64,), 2)
            if not bool(torch.isfinite(rng).all()):
                raise FormatError(f"{SCHEME!r} scale_range must be finite")
        else:
            self.require(enc, "scale", fl, groups)
        if "loc" in enc.tensors:
            self.require(enc, "loc", fl, groups)
        if enc.packed:
            self.require(enc, "codes", (torch.uint8,), packed_nbytes(enc.numel, bits))
        else:
            self.require(enc, "codes", (torch.uint8, torch.int16, torch.int32, torch.int64),
                         enc.numel)  # fmt: skip
        if ("outlier_index" in enc.tensors) != ("outlier_value" in enc.tensors):
            raise FormatError(f"{SCHEME!r} needs both 'outlier_index' and 'outlier_value'")
        if "outlier_index" in enc.tensors:
            idx = self.require(enc, "outlier_index", (torch.int32, torch.int64))
            self.require(enc, "outlier_value", fl, idx.numel())
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= enc.numel):
                raise FormatError(f"{SCHEME!r} outlier indices out of range")

    def pack(self, enc: EncodedTensor) -> EncodedTensor:
        tensors = dict(enc.tensors)
        tensors["codes"] = pack_codes(enc.tensors["codes"], enc.meta["bits"])
        return dataclasses.replace(enc, tensors=tensors, packed=True)

    def unpack(self, enc: EncodedTensor) -> EncodedTensor:
        tensors = dict(enc.tensors)
        bits = enc.meta["bits"]
        tensors["codes"] = unpack_bits(
            enc.tensors["codes"], bits, enc.numel, dtype=torch.uint8 if bits <= 8 else torch.int32
        )
        return dataclasses.replace(enc, tensors=tensors, packed=False)

    def decode(self, enc: EncodedTensor) -> torch.Tensor:
        enc = enc.unpack()
        t = enc.tensors
        n = enc.meta["n"]
        codes = t["codes"]
        if codes.numel() and int(codes.max()) >= n:
            raise FormatError(f"{SCHEME!r} codes exceed the {n} levels")
        gs = enc.meta.get("group_size", 0) or None
        if "scale_code" in t:
            scale = _Log8().value(t["scale_code"], t["scale_range"].to(t["scale_code"].device))
        else:
            scale = t["scale"].double()
        loc = t["loc"].double() if "loc" in t else torch.zeros_like(scale)
        out = dequantize(
            codes,
            dist="lloyd",
            n=n,
            packbits=False,
            shape=list(enc.shape),
            n_elems=enc.numel,
            loc=loc if gs else float(loc[0]),
            scale=scale if gs else float(scale[0]),
            levels=t["levels"],
            group_size=gs,
            dtype=str(enc.dtype).removeprefix("torch."),
        )
        if "outlier_index" in t:
            flat = out.view(-1)
            flat[t["outlier_index"].long()] = t["outlier_value"].to(enc.dtype)
        return out


register_codec(DistributionalCodec())


@dataclasses.dataclass(frozen=True)
class TensorReport:
    """Size and error of one stored tensor.

    >>> r = TensorReport("w", (4, 4), "distributional", "lloyd", 4, 12, 16, 0.01, 20.0)
    >>> r.bits_per_value
    6.0
    """

    name: str
    shape: tuple[int, ...]
    scheme: str
    method: str
    bits: int
    nbytes: int
    numel: int
    mse: float
    sqnr_db: float

    @property
    def bits_per_value(self) -> float:
        """Stored bits per entry, overheads (scales, codebook, outliers) included."""
        return 8.0 * self.nbytes / max(self.numel, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        for key in ("mse", "sqnr_db"):
            if not math.isfinite(out[key]):
                out[key] = None
        return out


def tensor_report(name: str, original: torch.Tensor, enc: EncodedTensor) -> TensorReport:
    """Size (packed) and error of ``enc`` against ``original``.

    SQNR is ``10 log10(sum x^2 / sum (x - x_hat)^2)`` in dB (infinite when exact).

    >>> w = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    >>> r = tensor_report("w", w, encode_distributional(w, DistConfig(bits=4, min_size=0)))
    >>> r.bits, round(r.bits_per_value, 2), r.sqnr_db > 19
    (4, 4.52, True)
    """
    packed = enc.pack()
    if original.is_floating_point() and original.numel():
        x = original.detach().double().reshape(-1)
        err = float(((enc.decode().double().reshape(-1) - x) ** 2).sum())
        sig = float((x * x).sum())
        mse = err / x.numel()
        sqnr = 10.0 * math.log10(sig / err) if err > 0 and sig > 0 else math.inf
    else:
        mse, sqnr = 0.0, math.inf
    return TensorReport(
        name=name,
        shape=tuple(original.shape),
        scheme=enc.scheme,
        method=str(enc.meta.get("method", enc.scheme)),
        bits=int(enc.meta.get("bits", 8 * original.element_size())),
        nbytes=packed.nbytes,
        numel=original.numel(),
        mse=mse,
        sqnr_db=sqnr,
    )


def _should_quantize(name: str, tensor: torch.Tensor, config: DistConfig) -> bool:
    import fnmatch

    if not tensor.is_floating_point() or tensor.dtype not in _FLOATS or tensor.ndim < 2:
        return False
    if tensor.numel() <= config.min_numel:
        return False
    short = name.rsplit(".", 1)[-1]
    return not any(
        fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(short, p) for p in config.exclude
    )


def compress_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: DistConfig | None = None,
    *,
    overrides: Mapping[str, DistConfig] | None = None,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> tuple[dict[str, EncodedTensor], list[TensorReport]]:
    """Quantize every eligible tensor of ``state_dict``; keep the rest as they are.

    Eligible: floating tensors with at least two dimensions, more than
    ``config.min_numel`` entries and no ``exclude`` pattern matching; others
    (biases, norms, integer buffers) are stored unquantized (in float16 when
    ``config.float16``). ``overrides`` maps names to their own config (mixed
    precision). ``progress`` wraps the iteration (e.g. ``tqdm.tqdm``).

    >>> sd = {"w": torch.randn(128, 64), "b": torch.zeros(128)}
    >>> enc, rep = compress_state_dict(sd, DistConfig(bits=4, min_size=0))
    >>> enc["w"].scheme, enc["b"].scheme, rep[0].sqnr_db > 19
    ('distributional', 'float', True)
    """
    cfg = config if config is not None else DistConfig()
    overrides = dict(overrides or {})
    items = list(state_dict.items())
    for name, value in items:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}] is a {type(value).__name__}, not a tensor")
    iterator: Iterable[tuple[str, torch.Tensor]] = progress(items) if progress else items  # type: ignore[assignment]
    encoded: dict[str, EncodedTensor] = {}
    reports: list[TensorReport] = []
    for name, tensor in iterator:
        tcfg = overrides.get(name, cfg)
        if _should_quantize(name, tensor, tcfg) or name in overrides:
            enc = encode_distributional(tensor, tcfg, name=name)
        else:
            enc = encode_float(tensor, cfg.float16)
        encoded[name] = enc.pack()
        reports.append(tensor_report(name, tensor, encoded[name]))
    return encoded, reports


def _relative_mse(tensor: torch.Tensor, enc: EncodedTensor) -> float:
    x = tensor.detach().double().reshape(-1)
    err = float(((enc.decode().double().reshape(-1) - x) ** 2).sum())
    sig = float((x * x).sum())
    return err / sig if sig > 0 else 0.0


def _stored_bits(cfg: DistConfig, numel: int) -> float:
    """Stored bits of one tensor under ``cfg``: codes, scales (and locations), codebook."""
    groups = -(-numel // cfg.group_size) if cfg.group_size else 1
    per_group = cfg.bits_per_value_overhead() * cfg.group_size if cfg.group_size else 32
    fixed = 32 * (1 << cfg.bits) + (128 if cfg.param_dtype == "log8" else 0)
    outliers = math.ceil(cfg.outliers * numel) * (32 + 16)
    return 8.0 * packed_nbytes(numel, cfg.bits) + groups * per_group + fixed + outliers


def allocate_bits(
    state_dict: Mapping[str, torch.Tensor],
    budget: float,
    config: DistConfig | None = None,
    *,
    bits: Iterable[int] = (2, 3, 4, 5, 6, 7, 8),
    group_sizes: Iterable[int] | None = None,
    gain_per_bit: float = 3.8,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> dict[str, DistConfig]:
    """Width (and group size) per tensor minimising the summed relative error at ``budget``.

    Mixed precision without data: each eligible tensor is quantized once per
    candidate group size at ``config.bits``; its relative error at other widths
    is predicted to shrink by ``gain_per_bit`` per extra bit (about 4 for
    optimal codebooks). A Lagrange multiplier, found by bisection, trades the
    summed relative error against the stored bits (codes, scales and codebooks
    all counted), so the total stays within ``budget`` bits per quantized
    value. Every tensor counts equally, so large tensors (embeddings) get fewer
    bits than small ones and each layer ends up with a similar share of the
    error. Returns one config per eligible tensor, for
    ``compress_state_dict(overrides=...)``.

    >>> sd = {"big": torch.randn(512, 256), "small": torch.randn(64, 64)}
    >>> alloc = allocate_bits(sd, 4.25, DistConfig(group_size=64, min_size=0))
    >>> alloc["big"].bits < alloc["small"].bits
    True
    """
    cfg = config if config is not None else DistConfig()
    if (
        isinstance(budget, bool)
        or not isinstance(budget, (int, float))
        or not math.isfinite(budget)
    ):
        raise ValueError(f"budget must be a finite number of bits per value, got {budget!r}")
    widths = sorted({check_bits(b, "bits") for b in bits})
    groups = sorted(set(group_sizes)) if group_sizes is not None else [cfg.group_size]
    if not widths or not groups or any(g < 0 for g in groups):
        raise ValueError("bits and group_sizes must be non-empty, group sizes >= 0")
    names = [k for k, v in state_dict.items() if _should_quantize(k, v, cfg)]
    if not names:
        return {}
    work = [(name, g) for name in names for g in groups]
    it: Iterable[tuple[str, int]] = progress(work) if progress else work  # type: ignore[assignment]
    base: dict[tuple[str, int], float] = {}
    for name, g in it:
        t = state_dict[name]
        enc = encode_distributional(t, dataclasses.replace(cfg, group_size=g), name=name)
        base[name, g] = max(_relative_mse(t, enc), 1e-30)
    options: dict[str, list[tuple[float, float, DistConfig]]] = {}
    for name in names:
        n = state_dict[name].numel()
        opts = []
        for g in groups:
            for b in widths:
                c = dataclasses.replace(cfg, group_size=g, bits=b)
                opts.append((base[name, g] * gain_per_bit ** (cfg.bits - b), _stored_bits(c, n), c))
        options[name] = opts
    total = sum(state_dict[k].numel() for k in names)
    limit = budget * total

    def pick(lam: float) -> tuple[dict[str, tuple[float, float, DistConfig]], float]:
        chosen = {k: min(v, key=lambda o: o[0] + lam * o[1]) for k, v in options.items()}
        return chosen, sum(o[1] for o in chosen.values())

    cheapest = sum(min(o[1] for o in v) for v in options.values())
    if cheapest > limit:
        raise ValueError(
            f"budget={budget} bits per value is below the cheapest option "
            f"({cheapest / total:.3f} bits per value)"
        )
    lo, hi = 0.0, 1.0
    while pick(hi)[1] > limit:
        hi *= 10.0
    for _ in range(100):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e6
        if pick(mid)[1] > limit:
            lo = mid
        else:
            hi = mid
        if lo > 0 and hi / lo < 1 + 1e-9:
            break
    chosen, spent = pick(hi)
    # spend what is left on the best single upgrades that still fit
    improved = True
    while improved:
        improved = False
        best = None
        for name, opts in options.items():
            cur = chosen[name]
            for o in opts:
                extra = o[1] - cur[1]
                if o[0] < cur[0] and extra > 0 and spent + extra <= limit:
                    gain = (cur[0] - o[0]) / extra
                    if best is None or gain > best[0]:
                        best = (gain, name, o)
        if best is not None:
            _, name, o = best
            spent += o[1] - chosen[name][1]
            chosen[name] = o
            improved = True
    return {k: v[2] for k, v in chosen.items()}


class DistributionalQuantizer(BaseQuantizer):
    """Post-training quantizer with distributional / Lloyd-Max codebooks.

    Attaches to ``model`` like every optiquant quantizer: in eval mode (or
    inside ``enter_quantize()``) forwards use the quantized weights, and
    ``get_quantized_state()`` / ``save_quantized`` store them packed.

    >>> model = torch.nn.Linear(256, 64)
    >>> q = DistributionalQuantizer(model, bits=4, group_size=64, min_size=0)
    >>> _ = model.eval()
    >>> y = model(torch.randn(2, 256))
    >>> q.true_model_size() < 256 * 64 * 4 / 2**20 / 6
    True
    """

    scheme: ClassVar[str] = SCHEME

    def __init__(
        self,
        model: nn.Module,
        bits: int = 4,
        method: str = "lloyd",
        group_size: int = 0,
        scaling: str = "absmax",
        outliers: float = 0.0,
        beta: float | None = None,
        param_dtype: str = "float16",
        min_size: float = 0.01,
        float16: bool = False,
        exclude: Iterable[str] | str = (),
        detect_bound: bool = True,
    ) -> None:
        config = DistConfig(
            bits=bits,
            method=method,
            group_size=group_size,
            scaling=scaling,
            outliers=outliers,
            beta=beta,
            param_dtype=param_dtype,
            min_size=min_size,
            float16=float16,
            exclude=exclude,  # type: ignore[arg-type]
            detect_bound=detect_bound,
        )
        super().__init__(model, config)

    def _encode(self, qp: QuantizedParam, weight: torch.Tensor) -> EncodedTensor:
        assert isinstance(self.config, DistConfig)
        return encode_distributional(weight, self.config, name=qp.name)
