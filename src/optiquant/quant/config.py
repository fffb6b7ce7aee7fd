"""Typed, validated and JSON-serialisable quantizer configurations.

Each quantizer turns its constructor options into one frozen dataclass, checked
once in ``__post_init__``. The same dataclass is written (as JSON) into quantized
states and files, and read back with :func:`config_from_dict`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

__all__ = [
    "DiffQConfig",
    "LSQConfig",
    "QuantizerConfig",
    "UniformConfig",
    "check_bits",
    "config_from_dict",
    "normalize_exclude",
    "register_config",
]

_CONFIGS: dict[str, type[QuantizerConfig]] = {}

#: Widths (in bits) a stored code may have.
MIN_STORED_BITS = 1
MAX_STORED_BITS = 16


def register_config(cls: type[QuantizerConfig]) -> type[QuantizerConfig]:
    """Make a config class known to :func:`config_from_dict` under ``cls.kind``.

    >>> @register_config
    ... @dataclasses.dataclass(frozen=True)
    ... class ExampleConfig(QuantizerConfig):
    ...     kind: ClassVar[str] = "example"
    ...     bits: int = 3
    >>> config_from_dict({"kind": "example", "bits": 5}) == ExampleConfig(bits=5)
    True
    """
    _CONFIGS[cls.kind] = cls
    return cls


def _check_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_bits(value: Any, name: str = "bits") -> int:
    """Validate an integer bit width in 1..16 (integral floats accepted).

    >>> check_bits(4), check_bits(8.0)
    (4, 8)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be an integer number of bits, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be a whole number of bits, got {value!r}")
    bits = int(value)
    if not MIN_STORED_BITS <= bits <= MAX_STORED_BITS:
        raise ValueError(f"{name} must be in [{MIN_STORED_BITS}, {MAX_STORED_BITS}], got {value!r}")
    return bits


def normalize_exclude(exclude: Any) -> tuple[str, ...]:
    """Turn ``exclude`` (a pattern or an iterable of fnmatch patterns) into a tuple.

    >>> normalize_exclude("bias"), normalize_exclude(["*.bias", "0.*"])
    (('bias',), ('*.bias', '0.*'))
    """
    if exclude is None:
        return ()
    if isinstance(exclude, str):
        return (exclude,)
    if not isinstance(exclude, Iterable):
        raise TypeError(f"exclude must be a string or an iterable of strings, got {exclude!r}")
    out = tuple(exclude)
    for pattern in out:
        if not isinstance(pattern, str):
            raise TypeError(f"exclude patterns must be strings, got {pattern!r}")
    return out


def _check_suffix(suffix: Any) -> str:
    if not isinstance(suffix, str) or not suffix or "." in suffix:
        raise ValueError(f"suffix must be a non-empty string without dots, got {suffix!r}")
    return suffix


@dataclasses.dataclass(frozen=True)
class QuantizerConfig:
    """Options every quantizer shares.

    ``min_size`` (MB): a parameter is quantized only if it has more than
    ``min_size * 2**20 / 4`` entries; ``float16``: store the parameters that are not
    quantized in half precision; ``exclude``: fnmatch patterns tested against the
    full parameter name (``"0.weight"``) and its last part (``"weight"``);
    ``detect_bound``: a parameter shared by several modules is quantized once.

    >>> QuantizerConfig(min_size=0.5, exclude=("bias",)).to_dict()["exclude"]
    ['bias']
    """

    kind: ClassVar[str] = "base"
    min_size: float = 0.01
    float16: bool = False
    exclude: tuple[str, ...] = ()
    detect_bound: bool = True

    def __post_init__(self) -> None:
        min_size = _check_number(self.min_size, "min_size")
        if min_size < 0:
            raise ValueError(f"min_size must be >= 0 (in MB), got {self.min_size!r}")
        object.__setattr__(self, "min_size", min_size)
        _check_bool(self.float16, "float16")
        _check_bool(self.detect_bound, "detect_bound")
        object.__setattr__(self, "exclude", normalize_exclude(self.exclude))

    @property
    def min_numel(self) -> int:
        """Parameters with more entries than this are quantized."""
        return int(self.min_size * 2**20 // 4)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict, with the config ``kind``."""
        out: dict[str, Any] = {"kind": self.kind}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out


@register_config
@dataclasses.dataclass(frozen=True)
class UniformConfig(QuantizerConfig):
    """Options of :class:`~optiquant.quant.UniformQuantizer` (``bits`` in 1..16).

    >>> UniformConfig(bits=4, qat=True).bits
    4
    """

    kind: ClassVar[str] = "uniform"
    bits: int = 8
    qat: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "bits", check_bits(self.bits))
        _check_bool(self.qat, "qat")


@register_config
@dataclasses.dataclass(frozen=True)
class LSQConfig(QuantizerConfig):
    """Options of :class:`~optiquant.quant.LSQ` (``bits`` in 1..16).

    >>> LSQConfig(bits=3).suffix
    '_lsq'
    """

    kind: ClassVar[str] = "lsq"
    bits: int = 8
    suffix: str = "_lsq"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "bits", check_bits(self.bits))
        _check_suffix(self.suffix)


_PARAMS = ("bits", "noise")
_NOISES = ("gaussian", "uniform")


@register_config
@dataclasses.dataclass(frozen=True)
class DiffQConfig(QuantizerConfig):
    """Options of :class:`~optiquant.quant.DiffQuantizer`.

    ``group_size`` consecutive weights share one learned bit width (0: one per
    tensor); the continuous bits live in ``[min_bits, max_bits]`` (within 1..16) and
    start at ``init_bits``; ``param`` is ``"bits"`` or ``"noise"``; ``noise`` is
    ``"gaussian"`` or ``"uniform"``; ``extra_bits`` is added before rounding;
    ``fast_noise=True`` draws each training noise sample from 16 hashed bits through
    a table of 65536 quantiles of the distribution (i.i.d., exact variance, keys
    from torch's generator; on AVX-512 CPUs applied and recomputed by fused
    kernels, see :mod:`optiquant.quant.noise`); the default uses ``torch``'s
    ``normal_``/``uniform_`` like diffq.

    >>> DiffQConfig(group_size=8, init_bits=6).init_bits
    6.0
    >>> DiffQConfig(init_bits=20)
    Traceback (most recent call last):
    ...
    ValueError: init_bits must lie strictly between min_bits=2.0 and max_bits=15.0, got 20
    """

    kind: ClassVar[str] = "diffq"
    group_size: int = 1
    min_bits: float = 2.0
    max_bits: float = 15.0
    param: str = "bits"
    noise: str = "gaussian"
    init_bits: float = 8.0
    extra_bits: float = 0.0
    suffix: str = "_diffq"
    fast_noise: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        gs = self.group_size
        if isinstance(gs, bool) or not isinstance(gs, int) or gs < 0:
            raise ValueError(f"group_size must be an int >= 0, got {gs!r}")
        lo = _check_number(self.min_bits, "min_bits")
        hi = _check_number(self.max_bits, "max_bits")
        if not MIN_STORED_BITS <= lo < hi <= MAX_STORED_BITS:
            raise ValueError(
                f"min_bits and max_bits must satisfy {MIN_STORED_BITS} <= min_bits < max_bits"
                f" <= {MAX_STORED_BITS}, got min_bits={self.min_bits!r}, max_bits={self.max_bits!r}"
            )
        init = _check_number(self.init_bits, "init_bits")
        if not lo < init < hi:
            raise ValueError(
                f"init_bits must lie strictly between min_bits={lo} and max_bits={hi},"
                f" got {self.init_bits!r}"
            )
        extra = _check_number(self.extra_bits, "extra_bits")
        if self.param not in _PARAMS:
            raise ValueError(f"param must be one of {_PARAMS}, got {self.param!r}")
        if self.noise not in _NOISES:
            raise ValueError(f"noise must be one of {_NOISES}, got {self.noise!r}")
        _check_suffix(self.suffix)
        _check_bool(self.fast_noise, "fast_noise")
        for name, value in (("min_bits", lo), ("max_bits", hi), ("init_bits", init)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "extra_bits", extra)


def config_from_dict(data: Mapping[str, Any]) -> QuantizerConfig:
    """Rebuild (and validate) a config written by :meth:`QuantizerConfig.to_dict`.

    >>> cfg = DiffQConfig(group_size=4)
    >>> config_from_dict(cfg.to_dict()) == cfg
    True
    """
    if not isinstance(data, Mapping) or "kind" not in data:
        raise ValueError(f"a quantizer config must be a mapping with a 'kind', got {data!r:.80}")
    kind = data["kind"]
    if kind not in _CONFIGS:
        raise ValueError(f"unknown quantizer config kind {kind!r}; known: {sorted(_CONFIGS)}")
    cls = _CONFIGS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names - {"kind"}
    if unknown:
        raise ValueError(f"unknown fields for config {kind!r}: {sorted(unknown)}")
    values = {k: v for k, v in data.items() if k != "kind"}
    if "exclude" in values:
        values["exclude"] = normalize_exclude(values["exclude"])
    return cls(**values)
