"""The quantizer base: attach to a model, swap weights in forward, store, restore.

A quantizer never overwrites the model's parameters. It registers a forward
pre-hook and a forward hook on every module that owns a parameter it handles;
during that module's forward the attribute (``module.weight``) temporarily reads
a different tensor:

* training mode (``module.training``): the quantizer's training weight (DiffQ's
  pseudo quantization noise, straight-through fake quantization...);
* eval mode, or inside :meth:`BaseQuantizer.enter_quantize` / after
  :meth:`BaseQuantizer.quantize`: the quantized weight, exactly what a stored
  state decodes to. It is cached and recomputed only when the parameter (or the
  quantizer's own parameters) change, are moved, or are replaced.

Because the real parameters are untouched, saving ``model.state_dict()``, moving
the model with ``.to()`` or wrapping it (``DistributedDataParallel``,
``torch.compile``) while quantized never corrupts anything.

Subclasses implement :meth:`BaseQuantizer._encode` (one weight to an unpacked
:class:`~optiquant.quant.encoded.EncodedTensor`) and optionally
:meth:`BaseQuantizer._register_param`, :meth:`BaseQuantizer._train_weight`,
:meth:`BaseQuantizer._quantized_bits`, :meth:`BaseQuantizer._quantized_nbytes` and
:meth:`BaseQuantizer._load_encoded`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import gc
import weakref
import zlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import torch
from torch import nn

from optiquant.quant import kernels
from optiquant.quant.codecs import encode_float
from optiquant.quant.config import QuantizerConfig
from optiquant.quant.encoded import EncodedTensor

__all__ = ["BaseQuantizer", "FloatParam", "QuantizedParam", "attached_quantizer"]

MB = 2**20

# Modules currently hooked by a live quantizer (guards against two quantizers at once).
_HOOKED: weakref.WeakKeyDictionary[nn.Module, BaseQuantizer] = weakref.WeakKeyDictionary()
_ROOTS: weakref.WeakKeyDictionary[nn.Module, BaseQuantizer] = weakref.WeakKeyDictionary()


def module_param(module: nn.Module, name: str) -> torch.Tensor:
    """The parameter ``name`` registered on ``module`` (``RuntimeError`` if absent)."""
    param = module._parameters.get(name)
    if param is None:
        raise RuntimeError(f"parameter {name!r} is missing from its module (was it detached?)")
    return param


def attached_quantizer(model: nn.Module) -> BaseQuantizer | None:
    """The live quantizer attached to ``model`` (created on it), or ``None``.

    >>> model = torch.nn.Linear(4, 4)
    >>> attached_quantizer(model) is None
    True
    """
    return _ROOTS.get(model)


@dataclasses.dataclass(eq=False)
class FloatParam:
    """A parameter the quantizer stores unquantized (small, excluded or not floating point).

    >>> layer = torch.nn.Linear(2, 2)
    >>> entry = FloatParam("bias", layer, "bias")
    >>> entry.tensor() is layer.bias
    True
    """

    name: str
    module: nn.Module
    param_name: str
    other: FloatParam | None = None

    def tensor(self, module: nn.Module | None = None) -> torch.Tensor:
        """The current parameter (looked up on ``module`` or the owning module)."""
        param = (module if module is not None else self.module)._parameters[self.param_name]
        if param is None:
            raise RuntimeError(f"parameter {self.name!r} was removed from its module")
        return param


@dataclasses.dataclass(eq=False)
class QuantizedParam:
    """A quantized parameter occurrence; ``other`` is the first occurrence of a bound one.

    >>> layer = torch.nn.Linear(2, 2)
    >>> first = QuantizedParam(0, "encoder.weight", layer, "weight")
    >>> tied = QuantizedParam(1, "decoder.weight", layer, "weight", other=first)
    >>> tied.first is first, tied.tensor() is layer.weight
    (True, True)
    """

    index: int
    name: str
    module: nn.Module
    param_name: str
    other: QuantizedParam | None = None

    @property
    def first(self) -> QuantizedParam:
        """The occurrence that owns the stored state (itself unless bound)."""
        return self.other if self.other is not None else self

    def tensor(self, module: nn.Module | None = None) -> torch.Tensor:
        """The current parameter (looked up on ``module`` or the owning module)."""
        param = (module if module is not None else self.module)._parameters[self.param_name]
        if param is None:
            raise RuntimeError(f"parameter {self.name!r} was removed from its module")
        return param


@dataclasses.dataclass
class _CacheEntry:
    key: tuple[Any, ...]
    fingerprint: tuple[int, ...]
    encoded: EncodedTensor
    weight: torch.Tensor | None
    packed: EncodedTensor | None = None


def _tensor_key(t: torch.Tensor) -> tuple[Any, ...]:
    return (id(t), t._version, t.data_ptr(), t.device, t.dtype, tuple(t.shape))


def _fingerprint(t: torch.Tensor, cols: int = 1024) -> tuple[int, ...]:
    """``(sum v_i, sum i * v_i)`` of the bit patterns ``v`` of ``t``, wrapping in int64.

    Catches in-place edits that bypass autograd's version counter
    (``param.data.mul_(...)``), including reorderings (``param.data.copy_(
    param.data.flip(0))``), which leave a plain sum unchanged. The weighted sum
    comes from the row and column sums of ``v`` laid out as a matrix (or from
    one compiled pass, :func:`optiquant.quant.kernels.fingerprint`).
    """
    flat = t.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    raw = flat.view(torch.uint8)
    v = raw
    for dtype, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2)):
        if raw.numel() % size == 0:
            v = raw.view(dtype)
            break
    n = v.numel()
    if v.device.type == "cpu" and n >= kernels.MIN_NUMEL and kernels.available():
        return kernels.fingerprint(v.numpy())
    rows = n // cols
    body = v[: rows * cols].view(rows, cols)
    row_sums = body.sum(1, dtype=torch.int64)
    col_sums = body.sum(0, dtype=torch.int64)
    r = torch.arange(rows, dtype=torch.int64, device=v.device)
    c = torch.arange(cols, dtype=torch.int64, device=v.device)
    total = row_sums.sum()
    weighted = cols * (r * row_sums).sum() + (c * col_sums).sum()
    if rows * cols < n:
        tail = v[rows * cols :].to(torch.int64)
        index = torch.arange(rows * cols, n, dtype=torch.int64, device=v.device)
        total = total + tail.sum()
        weighted = weighted + (index * tail).sum()
    return tuple(torch.stack([total, weighted]).tolist())


def _device_of(enc: EncodedTensor) -> torch.device | None:
    for value in enc.tensors.values():
        return value.device
    return None


def _check_not_ddp(model: nn.Module) -> None:
    ddp = torch.nn.parallel.DistributedDataParallel
    if isinstance(model, ddp):
        raise RuntimeError(
            "the model is already wrapped in DistributedDataParallel: its quantizer "
            "parameters would never be synchronised. Create the quantizer on the bare "
            "model first, then wrap it: `quantizer = Quantizer(model); "
            "model = DistributedDataParallel(model)`."
        )
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for obj in gc.get_objects():
        # type(), not isinstance(): no attribute lookups on arbitrary objects (some
        # deprecated torch objects warn when their __class__ is read).
        if issubclass(type(obj), ddp):
            inner = obj.module
            if inner is model or any(m is model for m in inner.modules()):
                raise RuntimeError(
                    "this model is already wrapped by a DistributedDataParallel instance, "
                    "which would not synchronise the quantizer's parameters (the bits would "
                    "silently diverge between ranks). Create the quantizer before "
                    "DistributedDataParallel."
                )


class BaseQuantizer:
    """Attach a quantizer to ``model``; see the module docstring for the mechanics.

    ``config`` carries the options shared by all quantizers (``min_size``,
    ``float16``, ``exclude``, ``detect_bound``) plus the subclass's own.

    >>> from optiquant.quant import UniformQuantizer
    >>> model = torch.nn.Linear(64, 64)
    >>> quantizer = UniformQuantizer(model, bits=4, min_size=0)
    >>> isinstance(quantizer, BaseQuantizer), attached_quantizer(model) is quantizer
    (True, True)
    >>> sorted(quantizer.quantized_weights())
    ['bias', 'weight']
    >>> quantizer.detach()
    """

    #: Name of the codec the quantized parameters are stored with.
    scheme: ClassVar[str] = ""
    #: Suffix of the extra parameters registered on modules ("" when there are none).
    _has_params: ClassVar[bool] = False

    def __init__(self, model: nn.Module, config: QuantizerConfig) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, QuantizerConfig):
            raise TypeError(f"config must be a QuantizerConfig, got {type(config).__name__}")
        _check_not_ddp(model)
        for module in model.modules():
            if module in _HOOKED:
                raise RuntimeError(
                    "this model already has a quantizer attached; call .detach() on it first"
                )
        self.model = model
        self.config = config
        #: Whether eval-mode quantized weights are cached between forwards.
        self.cache = True
        self._qparams: list[QuantizedParam] = []
        self._floats: list[FloatParam] = []
        self._extra_names: set[str] = set()
        self._cache: dict[int, _CacheEntry] = {}
        self._forced = False
        self._optimizer_ready = not self._has_params
        self._epoch = 0
        self._detached = False
        self._depth: dict[int, int] = {}
        self._handles: list[Any] = []
        self._collect()
        for qp in self._qparams:
            if qp.other is None:
                self._register_param(qp)
        self._install_hooks()
        _ROOTS[model] = self

    # ------------------------------------------------------------------ discovery
    def _excluded(self, full: str, short: str) -> bool:
        return any(
            fnmatch.fnmatchcase(full, pat) or fnmatch.fnmatchcase(short, pat)
            for pat in self.config.exclude
        )

    def _collect(self) -> None:
        seen: dict[int, QuantizedParam | FloatParam] = {}
        for mname, module in self.model.named_modules():
            for pname, param in list(module._parameters.items()):
                if param is None:
                    continue
                full = f"{mname}.{pname}" if mname else pname
                first = seen.get(id(param)) if self.config.detect_bound else None
                if isinstance(first, QuantizedParam):
                    qp = QuantizedParam(len(self._qparams), full, module, pname, other=first)
                    self._qparams.append(qp)
                    continue
                if isinstance(first, FloatParam):
                    self._floats.append(FloatParam(full, module, pname, other=first))
                    continue
                quantize = (
                    param.is_floating_point()
                    and param.numel() > self.config.min_numel
                    and not self._excluded(full, pname)
                )
                entry: QuantizedParam | FloatParam
                if quantize:
                    entry = QuantizedParam(len(self._qparams), full, module, pname)
                    self._qparams.append(entry)
                else:
                    entry = FloatParam(full, module, pname)
                    self._floats.append(entry)
                seen[id(param)] = entry

    def _add_param(self, qp: QuantizedParam, suffix: str, value: torch.Tensor) -> nn.Parameter:
        """Register ``value`` as a new parameter ``param_name + suffix`` on ``qp.module``."""
        name = qp.param_name + suffix
        if name in qp.module._parameters or hasattr(qp.module, name):
            raise RuntimeError(
                f"module of {qp.name!r} already has an attribute {name!r}; is another "
                "quantizer attached? Use a different suffix or detach it."
            )
        param = nn.Parameter(value)
        qp.module.register_parameter(name, param)
        prefix = qp.name[: -len(qp.param_name)]
        self._extra_names.add(prefix + name)
        return param

    # ---------------------------------------------------------------------- hooks
    def _install_hooks(self) -> None:
        per_module: dict[int, tuple[nn.Module, list[QuantizedParam | FloatParam]]] = {}
        entries: list[QuantizedParam | FloatParam] = [*self._qparams, *self._floats]
        for entry in entries:
            if isinstance(entry, FloatParam) and not self.config.float16:
                continue
            key = id(entry.module)
            per_module.setdefault(key, (entry.module, []))[1].append(entry)
        for module, entries in per_module.values():
            _HOOKED[module] = self
            self._handles.append(module.register_forward_pre_hook(self._make_pre_hook(entries)))
            self._handles.append(
                module.register_forward_hook(self._make_post_hook(entries), always_call=True)
            )

    def _make_pre_hook(self, entries: list[QuantizedParam | FloatParam]) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            depth = self._depth.get(id(module), 0)
            self._depth[id(module)] = depth + 1
            if depth:
                return
            quantized = self._forced or not module.training
            if not quantized and self._cache:
                self._cache.clear()
            if not quantized and not self._optimizer_ready:
                self._depth.pop(id(module), None)
                raise RuntimeError(
                    f"{type(self).__name__} has trainable parameters: call "
                    "quantizer.setup_optimizer(optimizer) (or quantizer.no_optimizer()) before "
                    "training forwards"
                )
            shadows = module.__dict__
            for entry in entries:
                value: torch.Tensor | None
                if quantized:
                    value = self._eval_weight(entry, module)
                elif isinstance(entry, QuantizedParam):
                    value = self._train_weight(entry, module)
                else:
                    value = None
                if value is not None:
                    shadows[entry.param_name] = value
            if isinstance(module, nn.RNNBase):
                module._flat_weights = [getattr(module, n) for n in module._flat_weights_names]

        return hook

    def _make_post_hook(self, entries: list[QuantizedParam | FloatParam]) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            depth = self._depth.get(id(module), 1) - 1
            if depth > 0:
                self._depth[id(module)] = depth
                return
            self._depth.pop(id(module), None)
            for entry in entries:
                module.__dict__.pop(entry.param_name, None)
            if isinstance(module, nn.RNNBase):
                module._init_flat_weights()

        return hook

    # ------------------------------------------------------------ weights in forward
    def _extra_key(self, qp: QuantizedParam) -> tuple[Any, ...]:
        """Versions of the quantizer's own tensors that the encoding of ``qp`` depends on."""
        return ()

    def _cached(
        self, qp: QuantizedParam, module: nn.Module | None = None, *, decode: bool = True
    ) -> _CacheEntry:
        """The encoding (and, with ``decode``, the eval-mode weight) of ``qp``'s current value.

        Reused while the parameter, the quantizer's own tensors and the parameter's
        content fingerprint are unchanged.
        """
        first = qp.first
        weight = first.tensor(module if qp.other is None else None)
        key = (*_tensor_key(weight), self._extra_key(first), self._epoch)
        entry = self._cache.get(first.index)
        if entry is not None and entry.key == key and entry.fingerprint == _fingerprint(weight):
            if decode and entry.weight is None:
                with torch.no_grad():
                    entry.weight = entry.encoded.decode()
            return entry
        with torch.no_grad():
            enc = self._encode(first, weight.detach())
            decoded = enc.decode() if decode else None
        entry = _CacheEntry(key, _fingerprint(weight), enc, decoded)
        if self.cache:
            self._cache[first.index] = entry
        return entry

    def _eval_weight(self, entry: QuantizedParam | FloatParam, module: nn.Module) -> torch.Tensor:
        if isinstance(entry, QuantizedParam):
            value = self._cached(entry, module).weight
            assert value is not None
            return value
        base = entry.other or entry
        tensor = base.tensor(module if entry.other is None else None)
        return self._float_value(tensor)

    def _float_value(self, tensor: torch.Tensor) -> torch.Tensor:
        """The value an unquantized parameter has once stored and restored."""
        enc = encode_float(tensor, self.config.float16)
        return enc.decode()

    # ------------------------------------------------------------- subclass hooks
    def _register_param(self, qp: QuantizedParam) -> None:
        """Create the quantizer's own parameters for the first occurrence ``qp``."""

    def _train_weight(self, qp: QuantizedParam, module: nn.Module) -> torch.Tensor | None:
        """The tensor used in a training forward (``None``: the parameter itself)."""
        return None

    def _encode(self, qp: QuantizedParam, weight: torch.Tensor) -> EncodedTensor:
        """Unpacked encoding of ``weight`` (the current value of ``qp``)."""
        raise NotImplementedError(f"{type(self).__name__} must define _encode()")

    def _quantized_bits(self, qp: QuantizedParam, exact: bool) -> torch.Tensor:
        """Stored bits of ``qp`` (differentiable where the quantizer learns its size)."""
        return torch.tensor(float(self._quantized_nbytes(qp) * 8))

    def _quantized_nbytes(self, qp: QuantizedParam) -> int:
        """Exact bytes of the packed encoding of ``qp``."""
        return self._cached_packed(qp).nbytes

    def _load_encoded(self, qp: QuantizedParam, enc: EncodedTensor) -> None:
        """Update the quantizer's own parameters from a restored encoding of ``qp``."""

    def _optimizer_defaults(self) -> dict[str, Any]:
        """Hyper-parameters of the param group :meth:`setup_optimizer` adds."""
        return {}

    # --------------------------------------------------------------------- checks
    def _check_live(self) -> None:
        if self._detached:
            raise RuntimeError(f"this {type(self).__name__} has been detached from its model")

    def _firsts(self) -> list[QuantizedParam]:
        return [qp for qp in self._qparams if qp.other is None]

    def _cached_or_encode(self, qp: QuantizedParam) -> EncodedTensor:
        return self._cached(qp, decode=False).encoded

    def _cached_packed(self, qp: QuantizedParam) -> EncodedTensor:
        """The packed encoding of ``qp``'s current value (packed once per cached encoding)."""
        entry = self._cached(qp, decode=False)
        if entry.packed is None:
            entry.packed = entry.encoded.pack()
        return entry.packed

    # -------------------------------------------------------------------- mode API
    def quantize(self) -> bool:
        """Use quantized weights in every forward, training ones included, until
        :meth:`unquantize`. Returns ``False`` if that was already the case.

        The parameters themselves are never modified.
        """
        self._check_live()
        changed = not self._forced
        self._forced = True
        return changed

    def unquantize(self) -> bool:
        """Go back to the automatic mode (quantized weights in eval mode only).

        Returns ``False`` if :meth:`quantize` was not in effect.
        """
        self._check_live()
        changed = self._forced
        self._forced = False
        return changed

    @contextlib.contextmanager
    def enter_quantize(self) -> Iterator[BaseQuantizer]:
        """Context manager: quantized weights in every forward inside the block."""
        self._check_live()
        previous = self._forced
        self._forced = True
        try:
            yield self
        finally:
            self._forced = previous

    #: Alias of :meth:`enter_quantize`.
    quantized = enter_quantize

    @property
    def is_quantized(self) -> bool:
        """Whether :meth:`quantize` (or :meth:`enter_quantize`) is in effect."""
        return self._forced

    def quantized_weights(self) -> dict[str, torch.Tensor]:
        """The weights an eval-mode forward uses, by parameter name (handled ones only).

        Unquantized parameters are included with the value they are stored with
        (half precision rounding when ``float16``).
        """
        self._check_live()
        out: dict[str, torch.Tensor] = {}
        for qp in self._qparams:
            value = self._cached(qp).weight
            assert value is not None
            out[qp.name] = value
        for fp in self._floats:
            out[fp.name] = self._float_value((fp.other or fp).tensor())
        return out

    def clear_cache(self) -> None:
        """Drop the cached quantized weights (they are recomputed when needed)."""
        self._cache.clear()

    # ----------------------------------------------------------------- optimizers
    def parameters(self) -> list[nn.Parameter]:
        """The quantizer's own trainable parameters (DiffQ's bits, LSQ's step sizes)."""
        self._check_live()
        out = []
        for qp in self._firsts():
            for name in self._param_names(qp):
                out.append(qp.module._parameters[name])
        return [p for p in out if p is not None]

    def _param_names(self, qp: QuantizedParam) -> list[str]:
        return []

    def setup_optimizer(self, optimizer: torch.optim.Optimizer, **overrides: Any) -> None:
        """Add the quantizer's parameters to ``optimizer`` as a new param group.

        ``overrides`` set that group's hyper-parameters (``lr=...``). If the
        parameters already sit in another group (the optimizer was built after the
        quantizer) and the optimizer has not stepped on them yet, they are moved.
        """
        self._check_live()
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r:.60}")
        params = self.parameters()
        ids = {id(p) for p in params}
        for group in optimizer.param_groups:
            if group.get("optiquant_quantizer") is True and any(
                id(p) in ids for p in group["params"]
            ):
                raise RuntimeError("setup_optimizer was already called with this optimizer")
        if any(p in optimizer.state for p in params):
            raise RuntimeError(
                "the optimizer already holds state for the quantizer's parameters (it was "
                "created after the quantizer and has stepped); call "
                "quantizer.clear_optimizer(optimizer) first"
            )
        self._remove_from(optimizer, ids)
        group = dict(self._optimizer_defaults())
        group = {k: v for k, v in group.items() if k == "lr" or k in optimizer.defaults}
        group.update(overrides)
        self._check_group(group)
        group["params"] = params
        group["optiquant_quantizer"] = True
        if params:
            optimizer.add_param_group(group)
        self._optimizer_ready = True

    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate the hyper-parameters of the quantizer's param group."""

    @staticmethod
    def _remove_from(optimizer: torch.optim.Optimizer, ids: set[int]) -> None:
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        optimizer.param_groups[:] = [
            g for g in optimizer.param_groups if g["params"] or not g.get("optiquant_quantizer")
        ]
        for p in list(optimizer.state):
            if id(p) in ids:
                del optimizer.state[p]

    def clear_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Remove the quantizer's parameters (and their state) from ``optimizer``."""
        self._check_live()
        self._remove_from(optimizer, {id(p) for p in self.parameters()})

    def no_optimizer(self) -> None:
        """Allow training forwards without :meth:`setup_optimizer` (parameters stay fixed
        unless you optimize them yourself)."""
        self._check_live()
        self._optimizer_ready = True

    def check_unused(self) -> None:
        """Zero the gradients of the quantizer's parameters whose weight got no gradient
        (unused layers, layer drop), so the size penalty alone does not shrink them."""
        self._check_live()
        for qp in self._firsts():
            grad = qp.tensor().grad
            if grad is None or not bool(grad.any()):
                for name in self._param_names(qp):
                    p = qp.module._parameters[name]
                    if p is not None and p.grad is not None:
                        p.grad.zero_()

    # ------------------------------------------------------------------------ sizes
    def _float_entries(self) -> Iterator[tuple[str, torch.Tensor]]:
        for fp in self._floats:
            if fp.other is None:
                yield fp.name, fp.tensor()

    def _buffers(self) -> dict[str, torch.Tensor]:
        out = {}
        for mname, module in self.model.named_modules():
            for bname, buf in module._buffers.items():
                if buf is None or bname in module._non_persistent_buffers_set:
                    continue
                out[f"{mname}.{bname}" if mname else bname] = buf
        return out

    def _float_nbytes(self) -> int:
        total = 0
        for _, tensor in self._float_entries():
            if self.config.float16 and tensor.dtype in (torch.float32, torch.float64):
                total += tensor.numel() * 2
            else:
                total += tensor.numel() * tensor.element_size()
        for buf in self._buffers().values():
            total += buf.numel() * buf.element_size()
        return total

    def model_size(self, exact: bool = False) -> torch.Tensor:
        """Size of the stored model in MB (2**20 bytes), as a tensor.

        Differentiable with respect to the quantizer's parameters where the
        quantizer learns its size (DiffQ); ``exact=True`` uses the rounded bits.
        """
        self._check_live()
        bits = [self._quantized_bits(qp, exact) for qp in self._firsts()]
        total = torch.stack(bits).sum() if bits else torch.zeros(())
        return (total / 8 + self._float_nbytes()) / MB

    def true_model_size(self) -> float:
        """Exact size in MB of the tensors of the packed state (see
        :meth:`get_quantized_state`); a file adds only its header to this."""
        self._check_live()
        total = self._float_nbytes()
        total += sum(self._quantized_nbytes(qp) for qp in self._firsts())
        return total / MB

    def packed_model_size(self) -> float:
        """Size in MB of the file :func:`~optiquant.io.save_quantized` writes (header included)."""
        from optiquant.io.format import state_to_bytes

        return len(state_to_bytes(self.get_quantized_state(packed=True))) / MB

    def compressed_model_size(self, compress_level: int = -1, num_workers: int = 8) -> float:
        """Size in MB of the unpacked state once zlib-compressed (chunks in parallel)."""
        from optiquant.io.format import state_to_bytes

        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
        data = state_to_bytes(self.get_quantized_state(packed=False))
        chunks = max(1, num_workers)
        step = -(-len(data) // chunks)
        pieces = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            sizes = list(pool.map(lambda b: len(zlib.compress(b, compress_level)), pieces))
        return sum(sizes) / MB

    # ------------------------------------------------------------------------ state
    def get_quantized_state(self, packed: bool = True) -> dict[str, Any]:
        """The model in stored form: a dict of strings, numbers and tensors.

        ``torch.save`` it and read it back with ``torch.load(path, weights_only=True)``,
        or use :func:`~optiquant.io.save_quantized` for the safetensors file. Restore
        with :meth:`restore_quantized_state` or the module function
        :func:`~optiquant.quant.restore_quantized_state`.
        """
        self._check_live()
        from optiquant.quant.state import build_state

        params: dict[str, EncodedTensor] = {}
        aliases: dict[str, str] = {}
        for qp in self._qparams:
            if qp.other is not None:
                aliases[qp.name] = qp.other.name
                continue
            params[qp.name] = self._cached_packed(qp) if packed else self._cached_or_encode(qp)
        for fp in self._floats:
            if fp.other is not None:
                aliases[fp.name] = fp.other.name
                continue
            params[fp.name] = encode_float(fp.tensor(), self.config.float16)
        buffers = {k: v.detach().clone() for k, v in self._buffers().items()}
        return build_state(
            quantizer=type(self).__name__,
            config=self.config.to_dict(),
            packed=packed,
            params=params,
            aliases=aliases,
            buffers=buffers,
        )

    def restore_quantized_state(self, state: Mapping[str, Any]) -> None:
        """Write the weights stored in ``state`` into the model and update the
        quantizer's own parameters, so eval-mode weights equal the stored ones."""
        self._check_live()
        from optiquant.quant.state import parse_state, write_state

        parsed = parse_state(state)
        decoded = write_state(self.model, parsed, skip=self._extra_names)
        self._epoch += 1
        self._cache.clear()
        for qp in self._firsts():
            enc = parsed.params.get(qp.name)
            if enc is None or enc.scheme != self.scheme:
                continue
            unpacked = enc.unpack().to(qp.tensor().device)
            self._load_encoded(qp, unpacked)
            weight = qp.tensor()
            key = (*_tensor_key(weight), self._extra_key(qp), self._epoch)
            if self.cache:
                value = decoded[qp.name].detach().clone()
                stored = enc if enc.packed and _device_of(enc) == weight.device else None
                self._cache[qp.index] = _CacheEntry(
                    key, _fingerprint(weight), unpacked, value, stored
                )

    # ----------------------------------------------------------------------- detach
    def detach(self) -> None:
        """Remove hooks and the quantizer's parameters from the model (idempotent)."""
        if self._detached:
            return
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for qp in self._firsts():
            for name in self._param_names(qp):
                qp.module._parameters.pop(name, None)
        entries: list[QuantizedParam | FloatParam] = [*self._qparams, *self._floats]
        for entry in entries:
            entry.module.__dict__.pop(entry.param_name, None)
            _HOOKED.pop(entry.module, None)
        if _ROOTS.get(self.model) is self:
            del _ROOTS[self.model]
        self._cache.clear()
        self._detached = True

    # --------------------------------------------------------------------- printing
    def __repr__(self) -> str:
        defaults = type(self.config)()
        parts = []
        for field in dataclasses.fields(self.config):
            value = getattr(self.config, field.name)
            if value != getattr(defaults, field.name):
                parts.append(f"{field.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"
