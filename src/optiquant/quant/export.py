"""TorchScript export with packed storage.

:func:`export` writes a TorchScript archive holding the model with its quantized
weights zeroed, their packed encodings, and TorchScript code that decodes them
into the weights on the first forward (or an explicit ``unpack()``). The archive
is re-zipped with deflate so the zeroed weights cost next to nothing: the file is
close to the true model size plus the model's code. Loading needs only
``torch.jit.load``. TorchScript is deprecated in recent torch releases; the
warnings it emits while scripting are silenced here.
"""

import copy
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, List  # noqa: UP035 (TorchScript needs typing.List)

import torch
from torch import nn

from optiquant.quant.base import BaseQuantizer
from optiquant.quant.state import parse_state

__all__ = ["export"]

_SCHEMES = {"uniform": 0, "grouped": 1, "lsq": 2}


def _ts_unpack_slice(data: torch.Tensor, width: int, numel: int) -> torch.Tensor:
    if width == 8:
        return data[:numel]
    shifts = torch.arange(0, 8, width, dtype=torch.uint8, device=data.device)
    values = (data.unsqueeze(1) >> shifts) & ((1 << width) - 1)
    return values.reshape(-1)[:numel]


def _ts_unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    out = torch.zeros(numel, dtype=torch.int32, device=packed.device)
    offset = 0
    start = 0
    for width in [8, 8, 4, 2, 1]:
        if bits - offset >= width:
            size = (numel * width + 7) // 8
            field = _ts_unpack_slice(packed[start : start + size], width, numel)
            out |= field.to(torch.int32) << offset
            start += size
            offset += width
    return out


def _ts_packed_nbytes(numel: int, bits: int) -> int:
    total = 0
    offset = 0
    for width in [8, 8, 4, 2, 1]:
        if bits - offset >= width:
            total += (numel * width + 7) // 8
            offset += width
    return total


def _ts_unpack_groups(packed: torch.Tensor, widths: torch.Tensor, gs: int) -> torch.Tensor:
    groups = widths.numel()
    order = torch.sort(widths.to(torch.int64), stable=True)[1]
    counts = torch.bincount(widths.to(torch.int64), minlength=17)
    parts: list[torch.Tensor] = []
    start = 0
    for width in range(17):
        count = int(counts[width])
        if count == 0:
            continue
        size = _ts_packed_nbytes(count * gs, width)
        parts.append(_ts_unpack_bits(packed[start : start + size], width, count * gs))
        start += size
    rows = torch.cat(parts).view(groups, gs)
    out = torch.empty_like(rows)
    out.index_copy_(0, order, rows)
    return out.view(-1)


def _ts_decode(
    scheme: int,
    meta: list[int],
    codes: torch.Tensor,
    aux: torch.Tensor,
    value: torch.Tensor,
    numel: int,
) -> torch.Tensor:
    bits, gs, offset, wbits = meta[0], meta[1], meta[2], meta[3]
    if scheme == 0:
        ints = _ts_unpack_bits(codes, bits, numel)
        step = (value[1] - value[0]) / float(2**bits - 1)
        out = ints.to(value.dtype)
        out.mul_(step).add_(value[0])
        return out
    if scheme == 2:
        ints = _ts_unpack_bits(codes, bits, numel)
        qn = -(2 ** (bits - 1))
        out = ints.to(value.dtype)
        out.add_(qn).mul_(value.reshape(()))
        return out
    groups = (numel + gs - 1) // gs
    if wbits > 0:
        widths = _ts_unpack_bits(aux, wbits, groups) + offset
    else:
        widths = torch.full([groups], offset, dtype=torch.int32, device=codes.device)
    ints = _ts_unpack_groups(codes, widths, gs)
    levels = torch.arange(17, dtype=value.dtype, device=value.device)
    levels = (torch.exp2(levels) - 1).clamp_min(1.0)
    step = ((value[1] - value[0]) / levels)[widths.to(torch.int64)]
    out = ints.to(value.dtype).view(groups, gs)
    out.mul_(step.unsqueeze(1)).add_(value[0])
    return out.view(-1)[:numel]


class _PackedExport(nn.Module):
    """Holds the packed weights and writes them into ``model`` on first use."""

    # typing.List: TorchScript reads these class annotations as strings.
    schemes: List[int]  # noqa: UP006
    metas: List[List[int]]  # noqa: UP006
    numels: List[int]  # noqa: UP006
    targets: List[torch.Tensor]  # noqa: UP006
    codes: List[torch.Tensor]  # noqa: UP006
    aux: List[torch.Tensor]  # noqa: UP006
    values: List[torch.Tensor]  # noqa: UP006
    unpacked: bool

    def __init__(self, model: nn.Module, entries: list[dict[str, Any]]) -> None:
        super().__init__()
        self.model = model
        self.schemes = [e["scheme"] for e in entries]
        self.metas = [e["meta"] for e in entries]
        self.numels = [e["numel"] for e in entries]
        # The targets alias the model's parameters; the archive keeps the sharing.
        self.targets = [e["target"] for e in entries]
        self.codes = [e["codes"] for e in entries]
        self.aux = [e["aux"] for e in entries]
        self.values = [e["value"] for e in entries]
        self.unpacked = False

    @torch.jit.export
    def unpack(self) -> None:
        if self.unpacked:
            return
        with torch.no_grad():
            for i in range(len(self.targets)):
                decoded = _ts_decode(
                    self.schemes[i],
                    self.metas[i],
                    self.codes[i],
                    self.aux[i],
                    self.values[i],
                    self.numels[i],
                )
                target = self.targets[i]
                target.view(-1).copy_(decoded)
        self.unpacked = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.unpack()
        return self.model(x)


def _float_copy(quantizer: BaseQuantizer) -> nn.Module:
    """A copy of the model without the quantizer's hooks and parameters."""
    model = copy.deepcopy(quantizer.model)
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in list(hooks):
                if "BaseQuantizer._make_" in getattr(hooks[key], "__qualname__", ""):
                    del hooks[key]
                    module._forward_hooks_always_called.pop(key, None)
    for name in quantizer._extra_names:
        path, _, attr = name.rpartition(".")
        owner = model.get_submodule(path) if path else model
        owner._parameters.pop(attr, None)
    return model


def export(quantizer: BaseQuantizer, path: str | os.PathLike[str]) -> torch.jit.ScriptModule:
    """Write ``quantizer``'s model to ``path`` as TorchScript with packed weights.

    The model must be scriptable and take one tensor (``forward(x) -> Tensor``).
    The quantizer and its model are left untouched. Returns the scripted module;
    ``torch.jit.load(path)`` gives the same module back, whose outputs equal the
    quantized model's eval-mode outputs.

    >>> import tempfile
    >>> from optiquant.quant import UniformQuantizer
    >>> model = torch.nn.Linear(16, 4)
    >>> quantizer = UniformQuantizer(model, bits=4, min_size=0)
    >>> x = torch.randn(3, 16)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     scripted = export(quantizer, tmp + "/model.pt")
    >>> torch.equal(scripted(x), model.eval()(x))
    True
    """
    if not isinstance(quantizer, BaseQuantizer):
        raise TypeError(f"export expects a quantizer, got {type(quantizer).__name__}")
    quantizer._check_live()
    parsed = parse_state(quantizer.get_quantized_state(packed=True))
    model = _float_copy(quantizer).eval()
    params = dict(model.named_parameters(remove_duplicate=False))
    entries: list[dict[str, Any]] = []
    with torch.no_grad():
        for name, enc in parsed.params.items():
            target = params[name]
            if enc.scheme == "float":
                target.copy_(enc.decode(device=target.device))
                continue
            if enc.scheme not in _SCHEMES:
                raise ValueError(f"cannot export parameter {name!r}: scheme {enc.scheme!r}")
            if target.dtype != torch.float32:
                raise ValueError(f"export supports float32 parameters, {name!r} is {target.dtype}")
            t = enc.tensors
            meta = enc.meta
            entries.append(
                {
                    "scheme": _SCHEMES[enc.scheme],
                    "meta": [
                        int(meta.get("bits", 0)),
                        int(meta.get("group_size", 1)),
                        int(meta.get("width_offset", 0)),
                        int(meta.get("width_bits", 0)),
                    ],
                    "numel": enc.numel,
                    "target": target,
                    "codes": t["codes"].clone(),
                    "aux": t.get("widths", torch.empty(0, dtype=torch.uint8)).clone(),
                    "value": (t["range"] if "range" in t else t["scale"]).reshape(-1).clone(),
                }
            )
            target.zero_()
        for name, buf in model.named_buffers():
            buf.copy_(parsed.buffers[name])
    wrapper = _PackedExport(model, entries)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(wrapper)
        path = Path(path)
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.pt"
            torch.jit.save(scripted, str(raw))
            _recompress(raw, path)
    return scripted


def _recompress(source: Path, target: Path) -> None:
    """Re-zip a TorchScript archive with deflate (zeroed weights shrink to almost nothing)."""
    with (
        zipfile.ZipFile(source) as src,
        zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
