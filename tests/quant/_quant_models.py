"""Small models and the table of quantizers shared by the quantizer tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from optiquant.quant import LSQ, BaseQuantizer, DiffQuantizer, UniformQuantizer

# Parameters above min_size=1e-3 MB (262 entries) are quantized.
MIN_SIZE = 1e-3


class TiedNet(nn.Module):
    """An embedding whose matrix is shared with the output layer, and a batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 24)
        self.hidden = nn.Linear(24, 24)
        self.norm = nn.BatchNorm1d(24)
        self.out = nn.Linear(24, 40, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.hidden(self.embed(idx))))
        return self.out(h)


def mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 8)
    ).to(dtype)


def tied(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TiedNet()


def lstm(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.LSTM(16, 24, num_layers=2)


Factory = Callable[..., BaseQuantizer]

QUANTIZERS: dict[str, Factory] = {
    "uniform4": lambda m, **kw: UniformQuantizer(m, bits=4, **kw),
    "uniform8_qat": lambda m, **kw: UniformQuantizer(m, bits=8, qat=True, **kw),
    "lsq3": lambda m, **kw: LSQ(m, bits=3, **kw),
    "diffq_gs1": lambda m, **kw: DiffQuantizer(m, group_size=1, **kw),
    "diffq_gs8": lambda m, **kw: DiffQuantizer(m, group_size=8, **kw),
    "diffq_gs0": lambda m, **kw: DiffQuantizer(m, group_size=0, **kw),
    "diffq_noise_uniform": lambda m, **kw: DiffQuantizer(
        m, group_size=4, param="noise", noise="uniform", **kw
    ),
}


def make(name: str, model: nn.Module, **kwargs: Any) -> BaseQuantizer:
    """Build quantizer ``name`` on ``model``, ready to train, with mixed DiffQ bits."""
    kwargs.setdefault("min_size", MIN_SIZE)
    quantizer = QUANTIZERS[name](model, **kwargs)
    quantizer.no_optimizer()
    if isinstance(quantizer, DiffQuantizer):
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in quantizer.parameters():
                p.copy_(torch.empty(p.shape).uniform_(-3, 3, generator=gen))
    return quantizer


def train_steps(model: nn.Module, quantizer: BaseQuantizer, inputs: torch.Tensor, steps: int = 2):
    """A few Adam steps so that weights (and learned quantizer parameters) move."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        out = model(inputs)
        if isinstance(out, tuple):
            out = out[0]
        loss = out.square().mean() + 1e-4 * quantizer.model_size()
        opt.zero_grad()
        loss.backward()
        opt.step()


def inputs_for(model: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    if isinstance(model, TiedNet):
        return torch.randint(0, 40, (16,), generator=gen)
    if isinstance(model, nn.LSTM):
        return torch.randn(5, 3, 16, generator=gen)
    return torch.randn(16, 32, generator=gen)
