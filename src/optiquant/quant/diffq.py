"""DiffQ: learned bits per group of weights through pseudo quantization noise.

Défossez, Adi and Synnaeve, "Differentiable Model Compression via Pseudo
Quantization Noise" (TMLR 2022, arXiv 2104.09987).

For a quantized tensor ``W`` split into groups of ``group_size`` consecutive
entries, each group ``g`` has a logit ``l_g`` and ``t_g = sigmoid(l_g)``:

* ``param="bits"``: ``b_g = min_bits + (max_bits - min_bits) * t_g`` and the noise
  scale is ``u_g = 1 / (2**b_g - 1)``;
* ``param="noise"``: ``u_g = exp(t_g * log(u_min) + (1 - t_g) * log(u_max))`` with
  ``u_min = 1 / (2**max_bits - 1)``, ``u_max = 1 / (2**min_bits - 1)``, and
  ``b_g = log2(1 + 1 / u_g)``.

A training forward uses ``W + Delta_g * eps`` with ``Delta_g = (max W - min W) * u_g``
(the quantization step at ``b_g`` bits) and ``eps`` drawn afresh each forward from
``N(0, 1/4)`` (``noise="gaussian"``, variance ``Delta_g**2 / 4``) or ``U(-1/2, 1/2)``
(``noise="uniform"``, variance ``Delta_g**2 / 12``). Gradients reach ``W`` (also
through the range) and the logits. Stored (and eval-mode) weights are min-max
quantized with ``clamp(round(b_g + extra_bits), 1, 16)`` bits per group.

The size penalty :meth:`DiffQuantizer.model_size` counts, per quantized tensor,
``group_size * sum_g (b_g + extra_bits)`` bits for the codes, the range (two
floats), and ``ceil(log2(1 + max_g w_g - min_g w_g))`` bits per group to store
the rounded widths ``w_g``; unquantized parameters and buffers add their bytes.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import nn

from optiquant.io.bitpack import MAX_BITS, grouped_nbytes, packed_nbytes
from optiquant.quant import kernels, memory
from optiquant.quant.base import MB, BaseQuantizer, QuantizedParam, _tensor_key, module_param
from optiquant.quant.codecs import compute_dtype, encode_grouped
from optiquant.quant.config import DiffQConfig
from optiquant.quant.encoded import EncodedTensor
from optiquant.quant.noise import HashNoise, add_noise, noise_backward

__all__ = ["DiffQuantizer", "pseudo_quantization_noise"]


def _extremes(flat: torch.Tensor, width: int = 256) -> tuple[torch.Tensor, ...]:
    """``(min, max, argmin, argmax)`` of 1-D ``flat`` (first occurrences), in two passes,
    or one for float32 with the vector kernels (:func:`optiquant.quant.kernels.extremes`).

    The minima and maxima of rows of ``width`` entries locate the row holding each
    extreme; the index is then searched in that row only.
    """
    n = flat.numel()
    if flat.device.type == "cpu" and flat.dtype == torch.float32 and n >= kernels.MIN_NUMEL:
        found = kernels.extremes(flat.contiguous().numpy())
        if found is not None:
            imin_t, imax_t = torch.tensor(found[0]), torch.tensor(found[1])
            return flat[imin_t], flat[imax_t], imin_t, imax_t
    rows = n // width
    if rows < 2:
        imin, imax = torch.argmin(flat), torch.argmax(flat)
        return flat[imin], flat[imax], imin, imax
    body = flat[: rows * width].view(rows, width)
    row_min = torch.argmin(body.amin(1)).reshape(1)
    row_max = torch.argmax(body.amax(1)).reshape(1)
    imin = row_min[0] * width + torch.argmin(body.index_select(0, row_min).view(-1))
    imax = row_max[0] * width + torch.argmax(body.index_select(0, row_max).view(-1))
    if rows * width < n:
        tail = flat[rows * width :]
        tmin = rows * width + torch.argmin(tail)
        tmax = rows * width + torch.argmax(tail)
        imin = torch.where(flat[tmin] < flat[imin], tmin, imin)
        imax = torch.where(flat[tmax] > flat[imax], tmax, imax)
    return flat[imin], flat[imax], imin, imax


def _noise_forward(
    ctx: Any, weight: torch.Tensor, scale: torch.Tensor, eps: torch.Tensor, factor: float
) -> torch.Tensor:
    """``W + (max W - min W) * u_g * factor * eps``; keeps what the backward needs on ``ctx``."""
    groups = scale.numel()
    flat = weight.reshape(-1)
    n = flat.numel()
    gs = -(-n // groups)
    full = (n // gs) * gs
    lo, hi, imin, imax = _extremes(flat.detach())
    span = (hi - lo).to(scale.dtype)
    amp = (scale * (span * factor)).to(weight.dtype)
    ctx.factor = factor
    ctx.layout = (gs, full, n)
    if isinstance(eps, HashNoise):
        if eps.fused(weight):
            ctx.noise = (eps, span, imin, imax)
            return add_noise(flat, amp, gs, eps).view(weight.shape)
        eps = eps.samples(n, weight.dtype, weight.device)
    eps = eps.reshape(-1)
    out = memory.empty(n, flat.dtype, flat.device)
    torch.addcmul(
        flat[:full].view(-1, gs),
        eps[:full].view(-1, gs),
        amp[: full // gs].unsqueeze(1),
        out=out[:full].view(-1, gs),
    )
    if full < n:
        torch.addcmul(flat[full:], eps[full:], amp[-1], out=out[full:])
    ctx.noise = (eps, span, imin, imax)
    return out.view(weight.shape)


def _noise_backward(
    ctx: Any, grad: torch.Tensor, scale: torch.Tensor, need_weight: bool
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`_noise_forward`: ``(grad_w, proj, coef)`` with ``grad_w`` the
    gradient to ``W`` (if ``need_weight``) and ``proj * coef`` the gradient to ``u``
    (``proj = sum_g grad * eps``, ``coef = factor * (max W - min W)``, kept apart so
    the caller folds ``coef`` into its own scalar factors)."""
    eps, span, imin, imax = ctx.noise
    gs, full, n = ctx.layout
    g = grad.reshape(-1)
    if isinstance(eps, HashNoise):
        grad_w, proj = noise_backward(g, gs, scale.numel(), eps)
    elif gs == 1:
        proj = g * eps
    else:
        # Per-group sums of g * eps as a matrix-vector product (faster than a reduction).
        ones = torch.ones(gs, dtype=g.dtype, device=g.device)
        proj = torch.mv((g[:full] * eps[:full]).view(-1, gs), ones)
        if full < n:
            proj = torch.cat([proj, torch.dot(g[full:], eps[full:]).reshape(1)])
    proj = proj.to(scale.dtype)
    if not need_weight:
        return None, proj, span * ctx.factor
    # Through the range: d out / d max = u_g * factor * eps = -d out / d min.
    d_span = (torch.dot(proj, scale) * ctx.factor).to(grad.dtype).reshape(1)
    if not isinstance(eps, HashNoise):
        grad_w = grad.clone()
    flat = grad_w.view(-1)
    flat.index_add_(0, imax.reshape(1), d_span)
    flat.index_add_(0, imin.reshape(1), -d_span)
    return grad_w.view(grad.shape), proj, span * ctx.factor


class _PseudoQuantNoise(torch.autograd.Function):
    """``W + (max W - min W) * u_g * factor * eps`` with the gradients to ``W`` and ``u``.

    Groups are ``ceil(numel / groups)`` consecutive entries; the last may be shorter.
    """

    @staticmethod
    def forward(
        ctx: Any,
        weight: torch.Tensor,
        scale: torch.Tensor,
        eps: torch.Tensor,
        factor: float,
    ) -> torch.Tensor:
        out = _noise_forward(ctx, weight, scale, eps, factor)
        ctx.save_for_backward(scale)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (scale,) = ctx.saved_tensors
        grad_w, proj, coef = _noise_backward(ctx, grad, scale, ctx.needs_input_grad[0])
        return grad_w, (proj.mul_(coef) if ctx.needs_input_grad[1] else None), None, None


_FACTORS = {"gaussian": 0.5, "uniform": 1.0}
_LN2 = math.log(2.0)


def _bits_scale(logit: torch.Tensor, low: float, span: float) -> tuple[torch.Tensor, ...]:
    """``(t, u)``: ``t = sigmoid(logit)`` and ``u = 1 / (2**(low + span * t) - 1)``."""
    t = torch.sigmoid(logit)
    u = torch.mul(t, span).add_(low).exp2_().sub_(1.0).reciprocal_()
    return t, u


def _bits_scale_grad(
    grad: torch.Tensor,
    t: torch.Tensor,
    u: torch.Tensor,
    span: float,
    coef: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """``coef * grad * du/dl`` with ``du/dl = -ln2 * span * u * (1 + u) * t * (1 - t)``;
    overwrites ``grad``."""
    out = grad.mul_(torch.addcmul(u, u, u))
    return out.mul_(torch.addcmul(t, t, t, value=-1.0)).mul_(coef * (-span * _LN2))


class _BitsNoiseScale(torch.autograd.Function):
    """``u = 1 / (2**b - 1)`` with ``b = low + span * sigmoid(logit)``, in few passes."""

    @staticmethod
    def forward(ctx: Any, logit: torch.Tensor, low: float, span: float) -> torch.Tensor:
        t, u = _bits_scale(logit, low, span)
        ctx.save_for_backward(t, u)
        ctx.span = span
        return u

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        t, u = ctx.saved_tensors
        return _bits_scale_grad(grad.clone(), t, u, ctx.span), None, None


class _BitsPseudoQuantNoise(torch.autograd.Function):
    """:class:`_PseudoQuantNoise` with ``u`` computed from the logits (``param="bits"``)
    inside the same node: fewer passes over the per-group tensors."""

    @staticmethod
    def forward(
        ctx: Any,
        weight: torch.Tensor,
        logit: torch.Tensor,
        eps: torch.Tensor,
        factor: float,
        low: float,
        span: float,
        record: tuple[dict[int, tuple[Any, int, Any]], int] | None = None,
    ) -> torch.Tensor:
        t, u = _bits_scale(logit, low, span)
        out = _noise_forward(ctx, weight, u, eps, factor)
        ctx.save_for_backward(t, u)
        ctx.span = span
        if record is not None:  # remember t (weakly) for the size penalty of this step
            sigmoids, key = record
            sigmoids[key] = (weakref.ref(logit), logit._version, weakref.ref(t))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        t, u = ctx.saved_tensors
        grad_w, proj, coef = _noise_backward(ctx, grad, u, ctx.needs_input_grad[0])
        grad_l = None
        if ctx.needs_input_grad[1]:
            grad_l = _bits_scale_grad(proj, t, u, ctx.span, coef)
        return grad_w, grad_l, None, None, None, None, None


class _SigmoidSum(torch.autograd.Function):
    """``sum(sigmoid(logit))`` from an already computed ``t = sigmoid(logit)``."""

    @staticmethod
    def forward(ctx: Any, logit: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(t)
        return t.sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (t,) = ctx.saved_tensors
        return torch.addcmul(t, t, t, value=-1.0).mul_(grad), None


def _fresh_noise(kind: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    eps = memory.empty(numel, dtype, device)
    return eps.normal_() if kind == "gaussian" else eps.uniform_(-0.5, 0.5)


def pseudo_quantization_noise(
    weight: torch.Tensor,
    scale: torch.Tensor,
    noise: str = "gaussian",
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """``weight`` plus DiffQ's noise for per-group noise scales ``scale`` (one per group).

    ``eps`` (standard samples, one per weight) defaults to a fresh draw. Differentiable
    with respect to ``weight`` (also through its range) and ``scale``.

    >>> w = torch.linspace(-1, 1, 8)
    >>> out = pseudo_quantization_noise(w, torch.zeros(4))
    >>> torch.equal(out, w)
    True
    """
    if noise not in _FACTORS:
        raise ValueError(f"noise must be 'gaussian' or 'uniform', got {noise!r}")
    n, groups = weight.numel(), scale.numel()
    if scale.dim() != 1 or not 0 < groups <= max(n, 1) or -(-n // -(-n // groups)) != groups:
        raise ValueError(
            f"scale must be 1-D with one entry per group of ceil({n} / {groups}) weights"
        )
    if eps is None:
        eps = _fresh_noise(noise, weight.numel(), weight.dtype, weight.device)
    elif eps.numel() != weight.numel():
        raise ValueError(f"eps must have {weight.numel()} entries, got {eps.numel()}")
    return _PseudoQuantNoise.apply(weight, scale, eps, _FACTORS[noise])


class DiffQuantizer(BaseQuantizer):
    """Learn the bits of each group of weights; see the module docstring for the math.

    Options match DiffQ's: ``group_size`` (0: one width per tensor; a last, partial
    group is allowed and stored padded), ``min_bits``, ``max_bits``, ``param``,
    ``noise``, ``init_bits``, ``extra_bits`` and ``suffix`` (the logits are
    registered on each module as ``<name><suffix>``), plus the shared
    ``min_size``, ``float16``, ``exclude`` and ``detect_bound``.

    >>> model = torch.nn.Linear(256, 32)
    >>> quantizer = DiffQuantizer(model, group_size=8, min_size=0)
    >>> optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    >>> quantizer.setup_optimizer(optimizer)
    >>> loss = model(torch.randn(4, 256)).square().mean() + 1e-3 * quantizer.model_size()
    >>> loss.backward()
    >>> model.weight_diffq.grad.shape
    torch.Size([1024])
    """

    scheme = "grouped"
    _has_params = True

    def __init__(
        self,
        model: nn.Module,
        min_size: float = 0.01,
        float16: bool = False,
        group_size: int = 1,
        min_bits: float = 2,
        max_bits: float = 15,
        param: str = "bits",
        noise: str = "gaussian",
        init_bits: float = 8,
        extra_bits: float = 0,
        suffix: str = "_diffq",
        exclude: Any = (),
        detect_bound: bool = True,
        fast_noise: bool = False,
    ) -> None:
        config = DiffQConfig(
            min_size=min_size,
            float16=float16,
            exclude=exclude,
            detect_bound=detect_bound,
            group_size=group_size,
            min_bits=min_bits,
            max_bits=max_bits,
            param=param,
            noise=noise,
            init_bits=init_bits,
            extra_bits=extra_bits,
            suffix=suffix,
            fast_noise=fast_noise,
        )
        self.config: DiffQConfig = config
        # Per first occurrence: (logit, its version, sigmoid) of the last training forward
        # (weakly held; reused by the size penalty while the logits are unchanged).
        self._sigmoids: dict[int, tuple[Any, int, Any]] = {}
        super().__init__(model, config)

    # ------------------------------------------------------------------ parametrisation
    @property
    def suffix(self) -> str:
        """Suffix of the logit parameters' names."""
        return self.config.suffix

    def _group_size(self, qp: QuantizedParam) -> int:
        n = qp.tensor().numel()
        return min(self.config.group_size or n, max(n, 1))

    def _logit_init(self) -> float:
        cfg = self.config
        if cfg.param == "bits":
            t = (cfg.init_bits - cfg.min_bits) / (cfg.max_bits - cfg.min_bits)
        else:
            u_min, u_max = self._noise_bounds()
            u = 1.0 / (2.0**cfg.init_bits - 1.0)
            t = (math.log(u) - math.log(u_max)) / (math.log(u_min) - math.log(u_max))
        return math.log(t / (1.0 - t))

    def _noise_bounds(self) -> tuple[float, float]:
        cfg = self.config
        return 1.0 / (2.0**cfg.max_bits - 1.0), 1.0 / (2.0**cfg.min_bits - 1.0)

    def get_bits(self, logit: torch.Tensor) -> torch.Tensor:
        """Continuous bits (before ``extra_bits``) for ``logit`` values (differentiable)."""
        cfg = self.config
        t = torch.sigmoid(logit)
        if cfg.param == "bits":
            return t * (cfg.max_bits - cfg.min_bits) + cfg.min_bits
        return torch.log2(1.0 + 1.0 / self.get_noise_scale(logit))

    def get_noise_scale(self, logit: torch.Tensor) -> torch.Tensor:
        """Noise scale ``u = Delta / (max W - min W)`` for ``logit`` values (differentiable)."""
        cfg = self.config
        if cfg.param == "bits":
            return _BitsNoiseScale.apply(logit, cfg.min_bits, cfg.max_bits - cfg.min_bits)
        t = torch.sigmoid(logit)
        u_min, u_max = self._noise_bounds()
        log_u = t * (math.log(u_min) - math.log(u_max)) + math.log(u_max)
        return torch.exp(log_u)

    def _logit_for_bits(self, bits: torch.Tensor) -> torch.Tensor:
        """Logits whose continuous bits are ``bits`` (clamped inside the open range)."""
        cfg = self.config
        span = cfg.max_bits - cfg.min_bits
        bits = bits.clamp(cfg.min_bits + 1e-3 * span, cfg.max_bits - 1e-3 * span)
        if cfg.param == "bits":
            t = (bits - cfg.min_bits) / span
        else:
            u_min, u_max = self._noise_bounds()
            u = 1.0 / torch.expm1(bits * math.log(2.0))
            t = (torch.log(u) - math.log(u_max)) / (math.log(u_min) - math.log(u_max))
        return torch.log(t / (1.0 - t))

    # ---------------------------------------------------------------------- parameters
    def _param_names(self, qp: QuantizedParam) -> list[str]:
        return [qp.param_name + self.suffix]

    def _logit(self, qp: QuantizedParam, module: nn.Module | None = None) -> torch.Tensor:
        first = qp.first
        owner = module if (module is not None and qp.other is None) else first.module
        return module_param(owner, first.param_name + self.suffix)

    def _full_logit(self, qp: QuantizedParam) -> torch.Tensor:
        """The logits of ``qp`` as one ordinary tensor: sharded ones (FSDP2's DTensor)
        are gathered (differentiably), so sizes and widths see every group."""
        logit = self._logit(qp)
        if hasattr(logit, "full_tensor") and hasattr(logit, "placements"):
            return logit.full_tensor()
        return logit

    def _register_param(self, qp: QuantizedParam) -> None:
        weight = qp.tensor()
        gs = self._group_size(qp)
        groups = -(-weight.numel() // gs)
        value = torch.full(
            (groups,), self._logit_init(), dtype=compute_dtype(weight.dtype), device=weight.device
        )
        self._add_param(qp, self.suffix, value)

    def _optimizer_defaults(self) -> dict[str, Any]:
        return {"lr": 1e-3, "weight_decay": 0.0}

    def _check_group(self, group: dict[str, Any]) -> None:
        if group.get("weight_decay", 0.0) != 0.0:
            raise ValueError(
                "DiffQ's bits parameters are never weight-decayed: weight_decay must be 0"
            )

    # ------------------------------------------------------------------------ forward
    def _train_weight(self, qp: QuantizedParam, module: nn.Module) -> torch.Tensor | None:
        weight = qp.tensor(module if qp.other is None else None)
        logit = self._logit(qp, module)
        cfg = self.config
        if cfg.param != "bits":
            scale = self.get_noise_scale(logit)
        eps: torch.Tensor | HashNoise
        if cfg.fast_noise:
            eps = HashNoise.draw(cfg.noise)
        else:
            eps = _fresh_noise(cfg.noise, weight.numel(), weight.dtype, weight.device)
        factor = _FACTORS[cfg.noise]
        if cfg.param == "bits":
            span = cfg.max_bits - cfg.min_bits
            record = (self._sigmoids, qp.first.index)
            return _BitsPseudoQuantNoise.apply(
                weight, logit, eps, factor, cfg.min_bits, span, record
            )
        return _PseudoQuantNoise.apply(weight, scale, eps, factor)

    def _sigmoid_sum(self, qp: QuantizedParam, logit: torch.Tensor) -> torch.Tensor:
        """``sigmoid(logit).sum()``, reusing the sigmoid of this step's training forward."""
        cached = self._sigmoids.get(qp.index)
        if cached is not None and cached[0]() is logit and cached[1] == logit._version:
            t = cached[2]()
            if t is not None:
                return _SigmoidSum.apply(logit, t)
        return torch.sigmoid(logit).sum()

    def _widths(self, qp: QuantizedParam) -> torch.Tensor:
        cfg = self.config
        with torch.no_grad():
            logit = self._full_logit(qp)
            if cfg.param == "bits":  # get_bits' operations, in place
                bits = torch.sigmoid(logit).mul_(cfg.max_bits - cfg.min_bits).add_(cfg.min_bits)
            else:
                bits = self.get_bits(logit)
            return bits.add_(cfg.extra_bits).round_().clamp_(1, MAX_BITS).to(torch.uint8)

    def get_widths(self) -> dict[str, torch.Tensor]:
        """Rounded bits per group (what is stored), by parameter name."""
        self._check_live()
        return {qp.name: self._widths(qp) for qp in self._firsts()}

    def _extra_key(self, qp: QuantizedParam) -> tuple[Any, ...]:
        return _tensor_key(self._logit(qp))

    def _encode(self, qp: QuantizedParam, weight: torch.Tensor) -> EncodedTensor:
        return encode_grouped(weight, self._widths(qp), self._group_size(qp), qp.name)

    def _load_encoded(self, qp: QuantizedParam, enc: EncodedTensor) -> None:
        widths = enc.tensors["widths"].to(self._logit(qp).dtype)
        target = widths - self.config.extra_bits
        with torch.no_grad():
            self._logit(qp).copy_(self._logit_for_bits(target))

    # -------------------------------------------------------------------------- sizes
    def _range_nbytes(self, qp: QuantizedParam) -> int:
        return 2 * compute_dtype(qp.tensor().dtype).itemsize

    def model_size(self, exact: bool = False) -> torch.Tensor:
        """Size of the stored model in MB (2**20 bytes), as a tensor, differentiable with
        respect to the bits logits; ``exact=True`` uses the rounded bits.

        With ``param="bits"`` the continuous size is a few operations for the whole
        model: ``sum_g b_g = G * min_bits + (max_bits - min_bits) * sum_g sigmoid(l_g)``
        per tensor, one dot product over the tensors.
        """
        self._check_live()
        cfg = self.config
        firsts = self._firsts()
        if exact or cfg.param != "bits" or not firsts:
            return super().model_size(exact)
        logits = [self._full_logit(qp) for qp in firsts]
        sums = torch.stack([self._sigmoid_sum(qp, lg) for qp, lg in zip(firsts, logits)])
        sizes = [self._group_size(qp) for qp in firsts]
        per_sum = [(cfg.max_bits - cfg.min_bits) * gs for gs in sizes]
        fixed = sum(
            lg.numel() * (cfg.min_bits + cfg.extra_bits) * gs + 8 * self._range_nbytes(qp)
            for qp, lg, gs in zip(firsts, logits, sizes)
        )
        with torch.no_grad():
            ends = torch.stack([torch.stack(torch.aminmax(lg.detach())) for lg in logits])
            ends = (self.get_bits(ends) + cfg.extra_bits).round_().clamp_(1, MAX_BITS)
            width_bits = torch.ceil(torch.log2(ends[:, 1] - ends[:, 0] + 1.0))
            groups = torch.tensor([lg.numel() for lg in logits], dtype=sums.dtype)
            stored = torch.dot(width_bits, groups.to(width_bits.device))
        coef = torch.tensor(per_sum, dtype=sums.dtype).to(sums.device)
        total = torch.dot(sums, coef) + (stored + fixed)
        return (total / 8 + self._float_nbytes()) / MB

    def _width_bits(self, logit: torch.Tensor) -> torch.Tensor:
        """Bits per group storing the rounded widths (bits grow with the logit)."""
        with torch.no_grad():
            ends = self.get_bits(torch.stack(torch.aminmax(logit))) + self.config.extra_bits
            low, high = ends.round_().clamp_(1, MAX_BITS)
            return torch.ceil(torch.log2(high - low + 1.0))

    def _quantized_bits(self, qp: QuantizedParam, exact: bool) -> torch.Tensor:
        gs = self._group_size(qp)
        logit = self._full_logit(qp)
        cfg = self.config
        if exact:
            total = self._widths(qp).sum(dtype=logit.dtype)
        elif cfg.param == "bits":
            # sum_g b_g = G * min_bits + (max_bits - min_bits) * sum_g sigmoid(l_g)
            total = self._sigmoid_sum(qp, logit) * (cfg.max_bits - cfg.min_bits)
            total = total + logit.numel() * (cfg.min_bits + cfg.extra_bits)
        else:
            total = (self.get_bits(logit) + cfg.extra_bits).sum()
        width_bits = self._width_bits(logit)
        return total * gs + width_bits * logit.numel() + 8.0 * self._range_nbytes(qp)

    def _quantized_nbytes(self, qp: QuantizedParam) -> int:
        gs = self._group_size(qp)
        widths = self._widths(qp)
        low, high = (int(v) for v in torch.aminmax(widths))
        width_bits = 0 if high == low else (high - low).bit_length()
        return (
            grouped_nbytes(widths, gs)
            + packed_nbytes(widths.numel(), width_bits)
            + self._range_nbytes(qp)
        )
