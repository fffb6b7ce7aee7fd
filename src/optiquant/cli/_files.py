"""Reading checkpoints, and writing/reading compressed files, for the command line.

Compressed files are optiquant's quantized-model files
(:mod:`optiquant.io.format`: safetensors plus a checksummed JSON document, no
pickle). The per-tensor report measured at compression time (MSE and SQNR) is
kept in each tensor's ``meta``, so ``inspect`` needs nothing but the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from optiquant.io.errors import FormatError
from optiquant.io.format import read_quantized, state_to_bytes
from optiquant.quant import ptq as _ptq  # registers the "distributional" codec
from optiquant.quant.encoded import EncodedTensor
from optiquant.quant.state import build_state, parse_state

__all__ = [
    "load_checkpoint",
    "read_compressed",
    "report_of",
    "with_report",
    "write_atomic",
    "write_compressed",
]


def _tensors_only(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner:
                return _tensors_only(inner, path)
    raise ValueError(
        f"{path}: no state dict found (expected a mapping of names to tensors, or one under "
        "'state_dict' or 'model')"
    )


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch state-dict file (``weights_only``)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p)))
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"{p}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors, zip errors, refused globals
        raise ValueError(
            f"{p}: cannot read it as a torch state dict with weights_only=True ({exc})"
        ) from None
    return _tensors_only(obj, p)


def write_atomic(path: Path, data: bytes, force: bool) -> None:
    """Write ``data`` to ``path`` through a temporary file; refuse to overwrite unless ``force``."""
    if path.exists() and not force:
        raise ValueError(f"{path} exists; pass --force to overwrite it")
    if path.is_dir():
        raise ValueError(f"{path} is a directory")
    if not path.parent.exists():
        raise ValueError(f"{path.parent}: no such directory")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def with_report(enc: EncodedTensor, report: _ptq.TensorReport) -> EncodedTensor:
    """``enc`` with the measured error stored in its meta (``None`` when exact)."""
    meta = dict(enc.meta)
    meta["report_mse"] = report.mse if math.isfinite(report.mse) else None
    meta["report_sqnr_db"] = report.sqnr_db if math.isfinite(report.sqnr_db) else None
    return dataclasses.replace(enc, meta=meta)


def write_compressed(
    path: Path,
    encoded: Mapping[str, EncodedTensor],
    *,
    config: Mapping[str, Any],
    force: bool = False,
) -> int:
    """Write a compressed file (optiquant's file format); returns its size in bytes."""
    state = build_state(
        quantizer="DistributionalQuantizer", config=config, packed=True, params=encoded
    )
    data = state_to_bytes(state)
    write_atomic(path, data, force)
    return len(data)


def read_compressed(
    path: str | os.PathLike[str],
) -> tuple[dict[str, EncodedTensor], dict[str, Any]]:
    """Encodings (by name) and the config of a compressed file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    parsed = parse_state(read_quantized(p))
    return dict(parsed.params), dict(parsed.config)


def report_of(name: str, enc: EncodedTensor) -> dict[str, Any]:
    """The per-tensor report row of a stored encoding."""
    if enc.scheme not in ("float", _ptq.SCHEME):
        raise FormatError(f"{name!r}: unexpected scheme {enc.scheme!r} in a compressed file")
    itemsize = torch.empty(0, dtype=enc.dtype).element_size()
    return {
        "name": name,
        "shape": list(enc.shape),
        "scheme": enc.scheme,
        "method": str(enc.meta.get("method", enc.scheme)),
        "bits": int(enc.meta.get("bits", 8 * itemsize)),
        "nbytes": enc.pack().nbytes,
        "numel": enc.numel,
        "mse": enc.meta.get("report_mse", 0.0 if enc.scheme == "float" else None),
        "sqnr_db": enc.meta.get("report_sqnr_db"),
    }
