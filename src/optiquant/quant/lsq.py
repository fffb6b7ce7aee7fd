"""Learned step size quantization (Esser et al., 2020) of weights."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from optiquant.io.bitpack import packed_nbytes
from optiquant.quant.base import BaseQuantizer, QuantizedParam, _tensor_key, module_param
from optiquant.quant.codecs import compute_dtype, encode_lsq, lsq_bounds
from optiquant.quant.config import LSQConfig
from optiquant.quant.encoded import EncodedTensor

__all__ = ["LSQ", "lsq_fake_quantize", "lsq_init_scale"]


def lsq_init_scale(weight: torch.Tensor, bits: int) -> float:
    """The paper's initial step size ``2 * mean(|w|) / sqrt(Q_P)`` (``Q_P >= 1``).

    >>> lsq_init_scale(torch.full((10,), 0.5), 3)
    0.5773502691896258
    """
    _, qp = lsq_bounds(bits)
    value = 2.0 * float(weight.detach().abs().mean()) / math.sqrt(max(qp, 1))
    return value if value > 0 and math.isfinite(value) else 1.0


class _LSQFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, weight: torch.Tensor, scale: torch.Tensor, bits: int, grad_scale: float
    ) -> torch.Tensor:
        qn, qp = lsq_bounds(bits)
        cdt = scale.dtype
        v = torch.div(weight.to(cdt), scale)
        q = v.clamp(qn, qp).round_()
        ctx.save_for_backward(v, q)
        ctx.bounds = (qn, qp)
        ctx.grad_scale = grad_scale
        return (q * scale).to(weight.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        v, q = ctx.saved_tensors
        qn, qp = ctx.bounds
        g = grad.to(v.dtype)
        inside = (v >= qn) & (v <= qp)
        grad_w = (g * inside).to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            # d(q * s)/ds = round(v) - v inside the range, the clamp bound outside.
            dq = torch.where(inside, q - v, q)
            grad_s = (g * dq).sum() * ctx.grad_scale
        return grad_w, grad_s, None, None


def lsq_fake_quantize(
    weight: torch.Tensor, scale: torch.Tensor, bits: int, grad_scale: float | None = None
) -> torch.Tensor:
    """``clamp(round(w / s), Q_N, Q_P) * s`` with LSQ's gradients.

    The weight gets a straight-through gradient inside the range; the step size
    gets the paper's gradient times ``grad_scale`` (default ``1 / sqrt(numel * Q_P)``).

    >>> w = torch.tensor([-1.0, 0.1, 0.4, 9.0])
    >>> lsq_fake_quantize(w, torch.tensor(0.25), 3).tolist()
    [-1.0, 0.0, 0.5, 0.75]
    """
    if grad_scale is None:
        _, qp = lsq_bounds(bits)
        grad_scale = 1.0 / math.sqrt(weight.numel() * max(qp, 1))
    return _LSQFunction.apply(weight, scale, bits, grad_scale)


class LSQ(BaseQuantizer):
    """Learned step size quantization: one trainable step size per tensor (``bits`` in 1..16).

    Training forwards use the fake-quantized weights, so train and eval outputs
    agree; call :meth:`setup_optimizer` (or :meth:`no_optimizer`) before training.

    >>> model = torch.nn.Linear(64, 64)
    >>> quantizer = LSQ(model, bits=4, min_size=0, exclude=["bias"])
    >>> [n for n, _ in model.named_parameters()]
    ['weight', 'bias', 'weight_lsq']
    """

    scheme = "lsq"
    _has_params = True

    def __init__(
        self,
        model: nn.Module,
        bits: int = 8,
        min_size: float = 0.01,
        float16: bool = False,
        suffix: str = "_lsq",
        exclude: Any = (),
        detect_bound: bool = True,
    ) -> None:
        config = LSQConfig(
            min_size=min_size,
            float16=float16,
            exclude=exclude,
            detect_bound=detect_bound,
            bits=bits,
            suffix=suffix,
        )
        super().__init__(model, config)

    @property
    def bits(self) -> int:
        """Bits per quantized weight."""
        return self.config.bits  # type: ignore[attr-defined, no-any-return]

    @property
    def suffix(self) -> str:
        """Suffix of the step size parameters' names."""
        return self.config.suffix  # type: ignore[attr-defined, no-any-return]

    def _param_names(self, qp: QuantizedParam) -> list[str]:
        return [qp.param_name + self.suffix]

    def _scale(self, qp: QuantizedParam, module: nn.Module | None = None) -> torch.Tensor:
        first = qp.first
        owner = module if (module is not None and qp.other is None) else first.module
        return module_param(owner, first.param_name + self.suffix)

    def _register_param(self, qp: QuantizedParam) -> None:
        weight = qp.tensor()
        value = lsq_init_scale(weight, self.bits)
        self._add_param(
            qp,
            self.suffix,
            torch.tensor(value, dtype=compute_dtype(weight.dtype), device=weight.device),
        )

    def _train_weight(self, qp: QuantizedParam, module: nn.Module) -> torch.Tensor | None:
        weight = qp.tensor(module if qp.other is None else None)
        return lsq_fake_quantize(weight, self._scale(qp, module), self.bits)

    def _extra_key(self, qp: QuantizedParam) -> tuple[Any, ...]:
        return _tensor_key(self._scale(qp))

    def _encode(self, qp: QuantizedParam, weight: torch.Tensor) -> EncodedTensor:
        return encode_lsq(weight, self._scale(qp), self.bits, qp.name)

    def _load_encoded(self, qp: QuantizedParam, enc: EncodedTensor) -> None:
        with torch.no_grad():
            self._scale(qp).copy_(enc.tensors["scale"].reshape(()))

    def _scale_nbytes(self, qp: QuantizedParam) -> int:
        return self._scale(qp).element_size()

    def _quantized_bits(self, qp: QuantizedParam, exact: bool) -> torch.Tensor:
        n = qp.tensor().numel()
        return torch.tensor(float(self.bits * n + 8 * self._scale_nbytes(qp)))

    def _quantized_nbytes(self, qp: QuantizedParam) -> int:
        return packed_nbytes(qp.tensor().numel(), self.bits) + self._scale_nbytes(qp)
