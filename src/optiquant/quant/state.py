"""Quantized states: build, validate and restore them without a quantizer.

A state is a plain dict (strings, numbers, lists and tensors only, so
``torch.load(..., weights_only=True)`` reads it)::

    {"format": "optiquant.quantized_state", "version": 1,
     "quantizer": "DiffQuantizer", "config": {...}, "packed": True,
     "params": {name: EncodedTensor.to_dict(), ...},   # every stored parameter
     "aliases": {name: stored_name, ...},             # bound (shared) parameters
     "buffers": {name: tensor, ...}}                  # persistent buffers
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from optiquant.io.errors import FormatError, ModelMismatchError
from optiquant.quant.encoded import EncodedTensor

__all__ = [
    "STATE_FORMAT",
    "STATE_VERSION",
    "build_state",
    "float_state",
    "parse_state",
    "restore_quantized_state",
]

STATE_FORMAT = "optiquant.quantized_state"
STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ParsedState:
    """A validated state: encodings by name, aliases, buffers and the header fields.

    >>> parsed = parse_state(float_state(torch.nn.Linear(3, 2)))
    >>> sorted(parsed.params), parsed.params["weight"].shape
    (['bias', 'weight'], (2, 3))
    """

    quantizer: str
    config: Mapping[str, Any]
    packed: bool
    params: Mapping[str, EncodedTensor]
    aliases: Mapping[str, str]
    buffers: Mapping[str, torch.Tensor]


def build_state(
    *,
    quantizer: str,
    config: Mapping[str, Any],
    packed: bool,
    params: Mapping[str, EncodedTensor],
    aliases: Mapping[str, str] | None = None,
    buffers: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Assemble a state dict (see the module docstring).

    >>> from optiquant.quant.codecs import encode_float
    >>> state = build_state(quantizer="none", config={}, packed=True,
    ...                     params={"w": encode_float(torch.ones(2))})
    >>> sorted(state)
    ['aliases', 'buffers', 'config', 'format', 'packed', 'params', 'quantizer', 'version']
    """
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "quantizer": quantizer,
        "config": dict(config),
        "packed": bool(packed),
        "params": {name: enc.to_dict() for name, enc in params.items()},
        "aliases": dict(aliases or {}),
        "buffers": dict(buffers or {}),
    }


def parse_state(state: Any) -> ParsedState:
    """Validate a state dict, raising :class:`~optiquant.io.FormatError` naming the problem.

    >>> parse_state({"format": "something else"})
    Traceback (most recent call last):
    ...
    optiquant.io.errors.FormatError: not an optiquant quantized state (format='something else')
    """
    if isinstance(state, ParsedState):
        return state
    if not isinstance(state, Mapping):
        raise FormatError(f"a quantized state must be a dict, got {type(state).__name__}")
    if state.get("format") != STATE_FORMAT:
        if "meta" in state and "quantized" in state:
            raise FormatError(
                "this looks like a diffq state; optiquant reads its own states "
                "(get_quantized_state) and files (save_quantized)"
            )
        raise FormatError(f"not an optiquant quantized state (format={state.get('format')!r})")
    version = state.get("version")
    if not isinstance(version, int) or not 1 <= version <= STATE_VERSION:
        raise FormatError(
            f"unsupported quantized state version {version!r} (this optiquant reads up to "
            f"{STATE_VERSION})"
        )
    for key, kind in (("params", Mapping), ("aliases", Mapping), ("buffers", Mapping)):
        if not isinstance(state.get(key), kind):
            raise FormatError(f"quantized state field {key!r} must be a mapping")
    params = {
        str(name): EncodedTensor.from_dict(data, name=f"parameter {name!r}")
        for name, data in state["params"].items()
    }
    aliases = dict(state["aliases"])
    for name, target in aliases.items():
        if not isinstance(target, str) or target not in params:
            raise FormatError(f"alias {name!r} points to {target!r}, which is not stored")
    buffers = dict(state["buffers"])
    for name, value in buffers.items():
        if not isinstance(value, torch.Tensor):
            raise FormatError(f"buffer {name!r} is not a tensor")
    config = state.get("config", {})
    if not isinstance(config, Mapping):
        raise FormatError("quantized state field 'config' must be a mapping")
    return ParsedState(
        quantizer=str(state.get("quantizer", "")),
        config=config,
        packed=bool(state.get("packed", False)),
        params=params,
        aliases=aliases,
        buffers=buffers,
    )


def _model_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for mname, module in model.named_modules():
        for bname, buf in module._buffers.items():
            if buf is None or bname in module._non_persistent_buffers_set:
                continue
            out[f"{mname}.{bname}" if mname else bname] = buf
    return out


def write_state(
    model: nn.Module, state: Any, *, skip: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """Check that ``state`` fits ``model``, then copy the decoded tensors into it.

    Everything is checked before the first parameter is written, so a mismatch
    leaves the model untouched. Parameter names in ``skip`` (a quantizer's own
    parameters) are ignored. Returns the written parameters by the name their
    values are stored under.

    >>> source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    >>> sorted(write_state(target, float_state(source)))
    ['bias', 'weight']
    >>> torch.equal(target.weight, source.weight)
    True
    """
    parsed = parse_state(state)
    skip = set(skip)
    from optiquant.quant.base import attached_quantizer

    attached = attached_quantizer(model)
    if attached is not None:
        skip |= attached._extra_names
    suffix = parsed.config.get("suffix")
    if isinstance(suffix, str) and suffix:
        # The learned parameters a quantizer of the same kind registers next to weights.
        skip |= {name + suffix for name in parsed.params}
    targets: dict[str, torch.Tensor] = {}
    for name, model_param in model.named_parameters(remove_duplicate=False):
        if name not in skip:
            targets[name] = model_param
    sources = {name: parsed.aliases.get(name, name) for name in targets}
    missing = sorted(n for n, src in sources.items() if src not in parsed.params)
    stored = set(parsed.params) | set(parsed.aliases)
    unexpected = sorted(stored - set(targets))
    if missing or unexpected:
        raise ModelMismatchError(
            "the quantized state does not match the model: "
            + (f"missing parameters {missing[:8]}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected parameters {unexpected[:8]}" if unexpected else "")
        )
    for name, param in targets.items():
        enc = parsed.params[sources[name]]
        if tuple(param.shape) != enc.shape:
            raise ModelMismatchError(
                f"parameter {name!r} has shape {tuple(param.shape)} in the model but "
                f"{enc.shape} in the quantized state"
            )
        if param.is_floating_point() != enc.dtype.is_floating_point:
            raise ModelMismatchError(
                f"parameter {name!r} is {param.dtype} in the model but {enc.dtype} in the state"
            )
    model_buffers = _model_buffers(model)
    if set(model_buffers) != set(parsed.buffers):
        extra = sorted(set(parsed.buffers) - set(model_buffers))
        lost = sorted(set(model_buffers) - set(parsed.buffers))
        raise ModelMismatchError(
            f"buffers differ between the quantized state and the model: missing {lost[:8]},"
            f" unexpected {extra[:8]}"
        )
    for name, buf in model_buffers.items():
        if tuple(buf.shape) != tuple(parsed.buffers[name].shape):
            raise ModelMismatchError(
                f"buffer {name!r} has shape {tuple(buf.shape)} in the model but "
                f"{tuple(parsed.buffers[name].shape)} in the state"
            )
    # Everything is checked: decode straight into the parameters.
    written: dict[str, torch.Tensor] = {}
    done: set[int] = set()
    with torch.no_grad():
        for name, param in targets.items():
            src = sources[name]
            if id(param) in done:
                written.setdefault(src, param)
                continue
            done.add(id(param))
            parsed.params[src].decode(out=param)
            written.setdefault(src, param)
        for name, buf in model_buffers.items():
            buf.copy_(parsed.buffers[name])
    return written


def restore_quantized_state(model: nn.Module, state: Any) -> nn.Module:
    """Load a quantized state into ``model`` (no quantizer needed) and return it.

    The model must have the architecture the state was made from (same parameter
    names and shapes); otherwise :class:`~optiquant.io.ModelMismatchError` is raised
    and the model is left unchanged. Its parameters then hold the quantized values.

    >>> import optiquant.quant as oq
    >>> model = torch.nn.Linear(64, 64)
    >>> q = oq.UniformQuantizer(model, bits=4, min_size=0)
    >>> state = q.get_quantized_state()
    >>> expected = q.quantized_weights()["weight"]
    >>> q.detach()
    >>> fresh = oq.restore_quantized_state(torch.nn.Linear(64, 64), state)
    >>> torch.equal(fresh.weight, expected)
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    write_state(model, state)
    return model


def float_state(model: nn.Module, float16: bool = False) -> dict[str, Any]:
    """A state storing every parameter of ``model`` unquantized (tied ones once).

    ``float16=True`` stores float32/float64 parameters in half precision.

    >>> state = float_state(torch.nn.Linear(2, 2))
    >>> sorted(state["params"])
    ['bias', 'weight']
    """
    from optiquant.quant.codecs import encode_float

    params: dict[str, EncodedTensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            aliases[name] = seen[id(param)]
            continue
        seen[id(param)] = name
        params[name] = encode_float(param, float16)
    buffers = {k: v.detach().clone() for k, v in _model_buffers(model).items()}
    return build_state(
        quantizer="none", config={}, packed=True, params=params, aliases=aliases, buffers=buffers
    )
