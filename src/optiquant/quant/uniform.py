"""Uniform min-max quantization, post-training or with straight-through QAT."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from optiquant.io.bitpack import packed_nbytes
from optiquant.quant.base import BaseQuantizer, QuantizedParam
from optiquant.quant.codecs import compute_dtype, encode_uniform
from optiquant.quant.config import UniformConfig
from optiquant.quant.encoded import EncodedTensor

__all__ = ["UniformQuantizer", "fake_quantize_uniform"]


def fake_quantize_uniform(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Min-max quantize then dequantize ``weight`` (no gradient; see :class:`UniformQuantizer`).

    >>> fake_quantize_uniform(torch.tensor([0.0, 0.4, 1.0]), 1).tolist()
    [0.0, 0.0, 1.0]
    """
    w = weight.detach()
    cdt = compute_dtype(w.dtype)
    lo, hi = (v.to(cdt) for v in torch.aminmax(w))
    levels = float(2**bits - 1)
    span = hi - lo
    inv = torch.where(span > 0, levels / span, torch.zeros_like(span))
    t = w.to(cdt) - lo
    t.mul_(inv).add_(0.5).floor_()
    t.mul_(span / levels).add_(lo)
    return t.to(w.dtype)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, bits: int) -> torch.Tensor:
        return fake_quantize_uniform(weight, bits)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class UniformQuantizer(BaseQuantizer):
    """Quantize every large parameter to ``bits`` bits (1..16) with a per-tensor min-max range.

    With ``qat=True`` training forwards use the quantized weights with a
    straight-through gradient; otherwise training is untouched and quantization
    happens in eval mode and when storing.

    >>> model = torch.nn.Sequential(
    ...     torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)
    ... )
    >>> quantizer = UniformQuantizer(model, bits=4, min_size=0.001)
    >>> # 4096 weights x 4 bits + one range (8 bytes); 324 small parameters in float32
    >>> round(quantizer.true_model_size() * 2**20)
    3352
    """

    scheme = "uniform"

    def __init__(
        self,
        model: nn.Module,
        bits: int = 8,
        min_size: float = 0.01,
        float16: bool = False,
        qat: bool = False,
        exclude: Any = (),
        detect_bound: bool = True,
    ) -> None:
        config = UniformConfig(
            min_size=min_size,
            float16=float16,
            exclude=exclude,
            detect_bound=detect_bound,
            bits=bits,
            qat=qat,
        )
        super().__init__(model, config)

    @property
    def bits(self) -> int:
        """Bits per quantized weight."""
        return self.config.bits  # type: ignore[attr-defined, no-any-return]

    def _encode(self, qp: QuantizedParam, weight: torch.Tensor) -> EncodedTensor:
        return encode_uniform(weight, self.bits, qp.name)

    def _train_weight(self, qp: QuantizedParam, module: nn.Module) -> torch.Tensor | None:
        if not self.config.qat:  # type: ignore[attr-defined]
            return None
        return _StraightThrough.apply(qp.tensor(module if qp.other is None else None), self.bits)

    def _range_nbytes(self, qp: QuantizedParam) -> int:
        return 2 * torch.empty((), dtype=compute_dtype(qp.tensor().dtype)).element_size()

    def _quantized_bits(self, qp: QuantizedParam, exact: bool) -> torch.Tensor:
        n = qp.tensor().numel()
        return torch.tensor(float(self.bits * n + 8 * self._range_nbytes(qp)))

    def _quantized_nbytes(self, qp: QuantizedParam) -> int:
        return packed_nbytes(qp.tensor().numel(), self.bits) + self._range_nbytes(qp)
