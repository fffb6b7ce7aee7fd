"""Packed inference: modules keep their quantized weights bit-packed in memory.

:func:`pack_model` replaces every quantized parameter of a model by buffers that
hold its packed encoding (a few bits per weight) and decodes it on the fly, for
the duration of the owning module's forward only. Memory at inference is then
close to the true model size plus the largest single weight being used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from optiquant.quant.base import BaseQuantizer
from optiquant.quant.encoded import EncodedTensor
from optiquant.quant.state import parse_state, write_state

__all__ = ["is_packed", "pack_model", "packed_nbytes_in_memory"]

_PREFIX = "_packed_"


class _PackedParam:
    """Where a packed parameter lives and how to rebuild its encoding from buffers."""

    def __init__(self, module: nn.Module, attr: str, enc: EncodedTensor) -> None:
        self.attr = attr
        self.scheme = enc.scheme
        self.shape = enc.shape
        self.dtype = enc.dtype
        self.meta = dict(enc.meta)
        self.keys = list(enc.tensors)
        for key, value in enc.tensors.items():
            # Bound parameters share the same buffer tensors (stored once).
            module.register_buffer(self.buffer_name(key), value, persistent=True)

    def buffer_name(self, key: str) -> str:
        return f"{_PREFIX}{self.attr}__{key}"

    def decode(self, module: nn.Module) -> torch.Tensor:
        tensors: dict[str, torch.Tensor] = {}
        for key in self.keys:
            value = module._buffers[self.buffer_name(key)]
            assert value is not None
            tensors[key] = value
        enc = EncodedTensor(self.scheme, self.shape, self.dtype, self.meta, tensors, packed=True)
        object.__setattr__(enc, "_valid", True)  # checked when the model was packed
        with torch.no_grad():
            return enc.decode()


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def is_packed(model: nn.Module) -> bool:
    """Whether :func:`pack_model` was applied to ``model``.

    >>> is_packed(torch.nn.Linear(2, 2))
    False
    """
    return any(getattr(m, "_optiquant_packed", None) for m in model.modules())


def pack_model(
    source: BaseQuantizer | nn.Module, state: Mapping[str, Any] | None = None
) -> nn.Module:
    """Turn a model into its packed inference form (in place) and return it.

    ``source`` is a quantizer (its model is packed with its current quantized state,
    and the quantizer is detached) or a model together with a quantized ``state``
    (from ``get_quantized_state`` or :func:`~optiquant.io.read_quantized`). Outputs
    equal the eval-mode outputs of the quantized model bit for bit.

    >>> import optiquant.quant as oq
    >>> model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU())
    >>> quantizer = oq.UniformQuantizer(model, bits=4, min_size=0)
    >>> x = torch.randn(2, 256)
    >>> expected = model.eval()(x)
    >>> packed = pack_model(quantizer)
    >>> torch.equal(packed(x), expected)
    True
    >>> packed_nbytes_in_memory(packed) < 256 * 256
    True
    """
    if isinstance(source, BaseQuantizer):
        if state is None:
            state = source.get_quantized_state(packed=True)
        model = source.model
        source.detach()
    elif isinstance(source, nn.Module):
        if state is None:
            raise ValueError("pack_model(model) needs the quantized state to pack")
        model = source
    else:
        raise TypeError(f"pack_model expects a quantizer or a model, got {type(source).__name__}")
    if is_packed(model):
        raise ValueError("this model is already packed")
    parsed = parse_state(state)
    write_state(model, parsed)  # checks the fit and restores the unquantized parameters
    per_module: dict[int, tuple[nn.Module, list[_PackedParam]]] = {}
    params = dict(model.named_parameters(remove_duplicate=False))
    encodings: dict[tuple[str, torch.device], EncodedTensor] = {}
    for name in params:
        src = parsed.aliases.get(name, name)
        if parsed.params[src].scheme == "float":
            continue
        module, attr = _owner(model, name)
        device = params[name].device
        key = (src, device)
        if key not in encodings:
            enc = parsed.params[src].pack().to(device)
            tensors = {k: v.detach().clone() for k, v in enc.tensors.items()}
            encodings[key] = EncodedTensor(
                enc.scheme, enc.shape, enc.dtype, enc.meta, tensors, packed=True
            )
        module._parameters.pop(attr, None)
        entry = _PackedParam(module, attr, encodings[key])
        per_module.setdefault(id(module), (module, []))[1].append(entry)
    for module, entries in per_module.values():
        module._optiquant_packed = entries  # type: ignore[assignment]
        module.register_forward_pre_hook(_pre_hook)
        module.register_forward_hook(_post_hook, always_call=True)
    return model


def _pre_hook(module: nn.Module, args: Any) -> None:
    for entry in module._optiquant_packed:  # type: ignore[union-attr]
        module.__dict__[entry.attr] = entry.decode(module)
    if isinstance(module, nn.RNNBase):
        module._flat_weights = [getattr(module, n) for n in module._flat_weights_names]


def _post_hook(module: nn.Module, args: Any, output: Any) -> None:
    for entry in module._optiquant_packed:  # type: ignore[union-attr]
        module.__dict__.pop(entry.attr, None)
    if isinstance(module, nn.RNNBase):
        module._flat_weights = [module._parameters.get(n) for n in module._flat_weights_names]


def packed_nbytes_in_memory(model: nn.Module) -> int:
    """Bytes held by ``model``'s parameters and buffers (packed ones count as stored).

    >>> packed_nbytes_in_memory(torch.nn.Linear(4, 4))
    80
    """
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total + sum(b.numel() * b.element_size() for b in model.buffers())
