"""The quantized model file: safetensors tensors plus typed, versioned JSON metadata.

Layout: a standard safetensors file. Its ``__metadata__`` holds one entry,
``"optiquant"``, a JSON document::

    {"format": "optiquant", "version": 1,
     "quantizer": "DiffQuantizer", "config": {...},        # the quantizer's options
     "packed": true,
     "params": {name: {"scheme": ..., "shape": [...], "dtype": "float32", "packed": true,
                       "meta": {...}, "tensors": {key: tensor_name}}},
     "aliases": {name: stored_name}, "buffers": {name: tensor_name},
     "checksum": {"algorithm": "sha256", "digest": "..."}}

Tensors are named ``p<i>/<key>`` (parameters) and ``b<i>`` (buffers). The
checksum covers the JSON document (without the checksum) and every tensor's name,
dtype, shape and bytes, so a corrupted or truncated file is refused with a
:class:`~optiquant.io.FormatError`. Nothing in a file is ever executed: reading
parses JSON and raw tensor bytes only (no pickle).

The file size is the size of its tensors (``true_model_size()`` of the quantizer
that wrote it, to the byte) plus the header: 8 bytes, the safetensors JSON index
(about 90 bytes per stored tensor) and the optiquant JSON document (about 200
bytes per parameter plus the config).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optiquant.io.errors import FormatError

__all__ = [
    "FILE_FORMAT",
    "FILE_VERSION",
    "load_quantized",
    "read_quantized",
    "save_quantized",
    "state_from_bytes",
    "state_to_bytes",
]

FILE_FORMAT = "optiquant"
FILE_VERSION = 1
_META_KEY = "optiquant"
_MAX_HEADER = 100 * 2**20


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().reshape(-1).contiguous().cpu()
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.view(torch.uint8).numpy().data


def _digest(doc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(_canonical({k: v for k, v in doc.items() if k != "checksum"}))
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _state_of(obj: Any) -> Mapping[str, Any]:
    from optiquant.quant.base import BaseQuantizer, attached_quantizer
    from optiquant.quant.state import float_state

    if isinstance(obj, BaseQuantizer):
        return obj.get_quantized_state(packed=True)
    if isinstance(obj, nn.Module):
        quantizer = attached_quantizer(obj)
        return quantizer.get_quantized_state(packed=True) if quantizer else float_state(obj)
    if isinstance(obj, Mapping):
        return obj
    raise TypeError(
        "save_quantized expects a quantizer, a model or a quantized state, got "
        f"{type(obj).__name__}"
    )


def _to_tensors(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from optiquant.quant.encoded import dtype_to_str
    from optiquant.quant.state import parse_state

    parsed = parse_state(state)
    tensors: dict[str, torch.Tensor] = {}
    params: dict[str, Any] = {}
    for i, (name, enc) in enumerate(parsed.params.items()):
        keys = {}
        for key, value in enc.tensors.items():
            tname = f"p{i}/{key}"
            value = value.detach().to("cpu")
            # Small tensors may share storage with the model: copy them.
            tensors[tname] = value.clone() if value.numel() < 1024 else value.contiguous()
            keys[key] = tname
        params[name] = {
            "scheme": enc.scheme,
            "shape": list(enc.shape),
            "dtype": dtype_to_str(enc.dtype),
            "packed": enc.packed,
            "meta": dict(enc.meta),
            "tensors": keys,
        }
    buffers = {}
    for i, (name, value) in enumerate(parsed.buffers.items()):
        tname = f"b{i}"
        tensors[tname] = value.detach().to("cpu").clone()
        buffers[name] = tname
    doc = {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "quantizer": parsed.quantizer,
        "config": dict(parsed.config),
        "packed": parsed.packed,
        "params": params,
        "aliases": dict(parsed.aliases),
        "buffers": buffers,
    }
    doc["checksum"] = {"algorithm": "sha256", "digest": _digest(doc, tensors)}
    return tensors, doc


def state_to_bytes(state: Mapping[str, Any]) -> bytes:
    """Serialise a quantized state to the bytes of an optiquant file.

    >>> from optiquant.quant import float_state
    >>> data = state_to_bytes(float_state(torch.nn.Linear(3, 2)))
    >>> state = state_from_bytes(data)
    >>> state["params"]["weight"]["shape"]
    [2, 3]
    """
    from safetensors.torch import save

    tensors, doc = _to_tensors(state)
    return bytes(save(tensors, metadata={_META_KEY: json.dumps(doc, allow_nan=False)}))


def _read_header(data: bytes, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if len(data) < 8:
        raise FormatError(f"{where}: file is truncated ({len(data)} bytes, no header)")
    size = int.from_bytes(data[:8], "little")
    if size > _MAX_HEADER or 8 + size > len(data):
        raise FormatError(
            f"{where}: file is truncated or corrupted (header of {size} bytes announced, "
            f"{len(data) - 8} available)"
        )
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{where}: corrupted header ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{where}: corrupted header (not a JSON object)")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or _META_KEY not in meta:
        raise FormatError(f"{where}: not an optiquant file (no optiquant metadata)")
    try:
        doc = json.loads(meta[_META_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{where}: corrupted optiquant metadata ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
        raise FormatError(f"{where}: not an optiquant file (format={doc.get('format')!r})")
    version = doc.get("version")
    if not isinstance(version, int) or not 1 <= version <= FILE_VERSION:
        raise FormatError(
            f"{where}: unsupported file version {version!r} (this optiquant reads up to "
            f"{FILE_VERSION})"
        )
    body = len(data) - 8 - size
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or offsets[1] > body
        ):
            raise FormatError(
                f"{where}: file is truncated or corrupted (tensor {name!r} lies outside the "
                f"{body} bytes of data)"
            )
    return header, doc


def state_from_bytes(data: bytes, where: str = "data") -> dict[str, Any]:
    """Parse and verify the bytes of an optiquant file into a quantized state.

    >>> from optiquant.quant import float_state
    >>> data = state_to_bytes(float_state(torch.nn.Linear(3, 2)))
    >>> sorted(state_from_bytes(data)["params"])
    ['bias', 'weight']
    >>> state_from_bytes(data[:-1])
    Traceback (most recent call last):
    ...
    optiquant.io.errors.FormatError: data: ...
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    _, doc = _read_header(data, where)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FormatError(f"{where}: corrupted tensor data ({exc})") from None
    checksum = doc.get("checksum")
    if not isinstance(checksum, dict) or checksum.get("algorithm") != "sha256":
        raise FormatError(f"{where}: missing or unknown checksum")
    if _digest(doc, tensors) != checksum.get("digest"):
        raise FormatError(f"{where}: checksum mismatch, the file is corrupted")
    try:
        params = {}
        for name, info in doc["params"].items():
            entry = {k: v for k, v in info.items() if k != "tensors"}
            entry["tensors"] = {key: tensors[t] for key, t in info["tensors"].items()}
            params[name] = entry
        buffers = {name: tensors[t] for name, t in doc["buffers"].items()}
        state = {
            "format": "optiquant.quantized_state",
            "version": 1,
            "quantizer": doc["quantizer"],
            "config": doc["config"],
            "packed": doc["packed"],
            "params": params,
            "aliases": doc["aliases"],
            "buffers": buffers,
        }
    except (KeyError, TypeError, AttributeError) as exc:
        raise FormatError(f"{where}: malformed optiquant metadata ({exc!r})") from None
    from optiquant.quant.state import parse_state

    parse_state(state)
    return state


def save_quantized(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write a quantizer's packed state (or a model's, or a state dict) to ``path``.

    ``obj`` is a quantizer, a model (its attached quantizer is used; a model with
    none is stored unquantized) or a state from ``get_quantized_state``. The file
    is written atomically. Returns the path.

    >>> import tempfile, torch
    >>> from optiquant.quant import UniformQuantizer
    >>> model = torch.nn.Linear(64, 64)
    >>> quantizer = UniformQuantizer(model, bits=4, min_size=0)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_quantized(quantizer, tmp + "/model.safetensors")
    ...     fresh = load_quantized(torch.nn.Linear(64, 64), path)
    >>> torch.equal(fresh.weight, quantizer.quantized_weights()["weight"])
    True
    """
    path = Path(path)
    data = state_to_bytes(_state_of(obj))
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_quantized(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify an optiquant file into a quantized state (no model needed).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_quantized(torch.nn.Linear(3, 2), tmp + "/model.safetensors")
    ...     state = read_quantized(path)
    >>> state["params"]["weight"]["shape"], state["params"]["weight"]["scheme"]
    ([2, 3], 'float')
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc})") from exc
    return state_from_bytes(data, where=str(path))


def load_quantized(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load an optiquant file into ``model`` (same architecture) and return the model.

    If a quantizer is attached to ``model`` it is updated too (its eval-mode
    weights become exactly the stored ones). Raises
    :class:`~optiquant.io.FormatError` for a corrupted, truncated or foreign file and
    :class:`~optiquant.io.ModelMismatchError` when the model does not fit.

    >>> import tempfile
    >>> source = torch.nn.Linear(3, 2)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_quantized(source, tmp + "/model.safetensors")
    ...     model = load_quantized(torch.nn.Linear(3, 2), path)
    >>> torch.equal(model.weight, source.weight)
    True
    """
    from optiquant.quant.base import attached_quantizer
    from optiquant.quant.state import restore_quantized_state

    state = read_quantized(path)
    quantizer = attached_quantizer(model)
    if quantizer is not None:
        quantizer.restore_quantized_state(state)
        return model
    return restore_quantized_state(model, state)
