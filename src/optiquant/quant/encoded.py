"""Encoded tensors and the registry of codecs that decode them.

An :class:`EncodedTensor` is one parameter in stored form: the name of its
``scheme``, the shape and dtype of the tensor it decodes to, JSON-serialisable
``meta`` data and a few named tensors (codes, ranges, scales...). It is either
*unpacked* (codes in ordinary integer tensors) or *packed* (codes bit-packed into
uint8 streams). A :class:`Codec`, registered under the scheme name, converts
between the two forms and decodes either of them back to a tensor, so restoring
a model never needs the quantizer that produced the state.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

import torch

from optiquant.io.errors import FormatError

__all__ = [
    "Codec",
    "EncodedTensor",
    "dtype_from_str",
    "dtype_to_str",
    "get_codec",
    "register_codec",
    "registered_schemes",
]

_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def dtype_to_str(dtype: torch.dtype) -> str:
    """The stable name of a dtype used in states and files.

    >>> dtype_to_str(torch.float16)
    'float16'
    """
    if dtype not in _DTYPE_NAMES:
        raise TypeError(f"dtype {dtype} cannot be stored")
    return _DTYPE_NAMES[dtype]


def dtype_from_str(name: Any) -> torch.dtype:
    """Inverse of :func:`dtype_to_str`; raises :class:`~optiquant.io.FormatError`.

    >>> dtype_from_str("bfloat16")
    torch.bfloat16
    """
    if not isinstance(name, str) or name not in _DTYPES:
        raise FormatError(f"unknown dtype name {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def _check_json(value: Any, where: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where} must be JSON-serialisable (finite numbers only): {exc}") from None


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedTensor:
    """One tensor in stored form (see the module docstring).

    >>> enc = EncodedTensor("float", (2,), torch.float32, {"storage": "float32"},
    ...                     {"value": torch.tensor([1.0, 2.0])})
    >>> enc.decode()
    tensor([1., 2.])
    >>> enc.nbytes
    8
    """

    scheme: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    meta: Mapping[str, Any]
    tensors: Mapping[str, torch.Tensor]
    packed: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, str) or not self.scheme:
            raise TypeError(f"scheme must be a non-empty string, got {self.scheme!r}")
        shape = tuple(self.shape)
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
            raise ValueError(f"shape must be a tuple of non-negative ints, got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        dtype_to_str(self.dtype)
        _check_json(dict(self.meta), f"meta of a {self.scheme!r} tensor")
        for key, value in self.tensors.items():
            if not isinstance(key, str) or not key or "/" in key:
                raise ValueError(f"tensor keys must be non-empty strings without '/', got {key!r}")
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"tensor {key!r} must be a torch.Tensor, got {type(value).__name__}"
                )

    @property
    def numel(self) -> int:
        """Number of entries of the decoded tensor."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes taken by the stored tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def validate(self) -> None:
        """Check the tensors and meta data with the scheme's codec (once per object)."""
        if not self.__dict__.get("_valid", False):
            self.codec.validate(self)
            object.__setattr__(self, "_valid", True)

    @property
    def codec(self) -> Codec:
        """The registered codec for :attr:`scheme`."""
        return get_codec(self.scheme)

    def pack(self) -> EncodedTensor:
        """The packed form (``self`` if already packed)."""
        return self if self.packed else self.codec.pack(self)

    def unpack(self) -> EncodedTensor:
        """The unpacked form (``self`` if already unpacked)."""
        return self.codec.unpack(self) if self.packed else self

    def decode(
        self, device: torch.device | str | None = None, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The tensor this encoding stands for, with :attr:`shape` and :attr:`dtype`.

        With ``out`` (a tensor of that shape) the values are written into it.
        """
        if out is not None:
            if tuple(out.shape) != self.shape:
                raise ValueError(f"out has shape {tuple(out.shape)}, expected {self.shape}")
            device = out.device
        enc = self if device is None else self.to(device)
        enc.validate()
        if out is not None:
            with torch.no_grad():
                return enc.codec.decode_into(enc, out)
        out = enc.codec.decode(enc)
        if tuple(out.shape) != self.shape or out.dtype != self.dtype:
            raise FormatError(
                f"codec {self.scheme!r} decoded a {out.dtype} tensor of shape {tuple(out.shape)},"
                f" expected {self.dtype} {self.shape}"
            )
        return out

    def to(self, device: torch.device | str) -> EncodedTensor:
        """The same encoding with its tensors on ``device``."""
        if all(v.device == torch.device(device) for v in self.tensors.values()):
            return self
        tensors = {k: v.to(device) for k, v in self.tensors.items()}
        return dataclasses.replace(self, tensors=tensors)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (strings, numbers, lists, tensors) that ``torch.load`` accepts with
        ``weights_only=True``."""
        return {
            "scheme": self.scheme,
            "shape": list(self.shape),
            "dtype": dtype_to_str(self.dtype),
            "packed": self.packed,
            "meta": dict(self.meta),
            "tensors": dict(self.tensors),
        }

    @classmethod
    def from_dict(cls, data: Any, name: str = "tensor") -> EncodedTensor:
        """Rebuild from :meth:`to_dict` output, raising :class:`~optiquant.io.FormatError`."""
        if not isinstance(data, Mapping):
            raise FormatError(f"{name}: expected a mapping, got {type(data).__name__}")
        missing = {"scheme", "shape", "dtype", "meta", "tensors"} - set(data)
        if missing:
            raise FormatError(f"{name}: missing fields {sorted(missing)}")
        if not isinstance(data["tensors"], Mapping) or not isinstance(data["meta"], Mapping):
            raise FormatError(f"{name}: 'tensors' and 'meta' must be mappings")
        shape = data["shape"]
        if not isinstance(shape, (list, tuple)):
            raise FormatError(f"{name}: shape must be a list, got {shape!r}")
        try:
            enc = cls(
                scheme=data["scheme"],
                shape=tuple(shape),
                dtype=dtype_from_str(data["dtype"]),
                meta=dict(data["meta"]),
                tensors=dict(data["tensors"]),
                packed=bool(data.get("packed", False)),
            )
        except (TypeError, ValueError) as exc:
            raise FormatError(f"{name}: {exc}") from None
        if enc.scheme not in _CODECS:
            raise FormatError(
                f"{name}: unknown scheme {enc.scheme!r}; known: {registered_schemes()}"
            )
        try:
            enc.validate()
        except FormatError as exc:
            raise FormatError(f"{name}: {exc}") from None
        return enc


class Codec:
    """Converts one scheme between packed and unpacked forms and decodes it.

    Subclasses set :attr:`scheme`, implement :meth:`decode` (for unpacked
    encodings) and, when packing changes anything, :meth:`pack`/:meth:`unpack`.
    :meth:`validate` checks the tensors an encoding carries before it is used.

    >>> class NegatedCodec(Codec):
    ...     scheme = "negated"
    ...     def decode(self, enc):
    ...         return -enc.tensors["value"].reshape(enc.shape)
    >>> value = torch.tensor([1.0, -2.0])
    >>> enc = EncodedTensor("negated", (2,), torch.float32, {}, {"value": value})
    >>> NegatedCodec().decode(enc).tolist()
    [-1.0, 2.0]
    """

    scheme: str = ""

    def pack(self, enc: EncodedTensor) -> EncodedTensor:
        """The packed form of an unpacked ``enc`` (default: unchanged, flagged packed)."""
        return dataclasses.replace(enc, packed=True)

    def unpack(self, enc: EncodedTensor) -> EncodedTensor:
        """The unpacked form of a packed ``enc`` (default: unchanged, flagged unpacked)."""
        return dataclasses.replace(enc, packed=False)

    def decode(self, enc: EncodedTensor) -> torch.Tensor:
        """Decode an encoding of this scheme (packed ones are unpacked first)."""
        raise NotImplementedError(f"{type(self).__name__} must define decode()")

    def decode_into(self, enc: EncodedTensor, out: torch.Tensor) -> torch.Tensor:
        """Decode ``enc`` into ``out`` (same shape, any float dtype) and return ``out``.

        The default decodes then copies; codecs override it to skip the copy.
        """
        return out.copy_(self.decode(enc))

    def validate(self, enc: EncodedTensor) -> None:
        """Raise :class:`~optiquant.io.FormatError` if ``enc`` is malformed."""

    # helpers for subclasses -------------------------------------------------------------
    @staticmethod
    def require(
        enc: EncodedTensor, key: str, dtypes: tuple[torch.dtype, ...], numel: int | None = None
    ) -> torch.Tensor:
        """The tensor ``key`` of ``enc``, checked for presence, dtype and size."""
        if key not in enc.tensors:
            raise FormatError(f"{enc.scheme!r} tensor is missing its {key!r} entry")
        value = enc.tensors[key]
        if value.dtype not in dtypes:
            raise FormatError(
                f"{enc.scheme!r} entry {key!r} has dtype {value.dtype}, expected one of {dtypes}"
            )
        if numel is not None and value.numel() != numel:
            raise FormatError(
                f"{enc.scheme!r} entry {key!r} has {value.numel()} elements, expected {numel}"
            )
        return value

    @staticmethod
    def meta_int(enc: EncodedTensor, key: str, low: int, high: int) -> int:
        """The integer ``meta[key]``, checked to lie in ``[low, high]``."""
        value = enc.meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise FormatError(
                f"{enc.scheme!r} meta {key!r} must be an int in [{low}, {high}], got {value!r}"
            )
        return value


_CODECS: dict[str, Codec] = {}


def register_codec(codec: Codec) -> Codec:
    """Register ``codec`` under ``codec.scheme`` (re-registering replaces it).

    >>> from optiquant.quant.codecs import FloatCodec
    >>> codec = register_codec(FloatCodec())
    >>> get_codec("float") is codec
    True
    """
    if not isinstance(codec, Codec) or not codec.scheme:
        raise TypeError("register_codec expects a Codec instance with a non-empty scheme")
    _CODECS[codec.scheme] = codec
    return codec


def get_codec(scheme: str) -> Codec:
    """The codec registered for ``scheme``.

    >>> get_codec("uniform").scheme
    'uniform'
    """
    try:
        return _CODECS[scheme]
    except KeyError:
        raise FormatError(f"unknown scheme {scheme!r}; known: {registered_schemes()}") from None


def registered_schemes() -> list[str]:
    """Names of the registered schemes, sorted.

    >>> {"float", "grouped", "lsq", "uniform"} <= set(registered_schemes())
    True
    """
    return sorted(_CODECS)
