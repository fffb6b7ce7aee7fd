"""Uniform QAT and LSQ, then inference with weights kept bit-packed in memory.

Run: ``python examples/quant_packed_inference.py`` (a few seconds on a laptop CPU).
"""

from __future__ import annotations

import torch
from torch import nn

from optiquant.quant import LSQ, UniformQuantizer, pack_model, packed_nbytes_in_memory


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256))


def fit(model: nn.Module, quantizer, steps: int = 60) -> float:
    gen = torch.Generator().manual_seed(0)
    target = nn.Linear(256, 256)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    quantizer.setup_optimizer(optimizer)  # LSQ adds its step sizes; a no-op for uniform
    model.train()
    for _ in range(steps):
        x = torch.randn(64, 256, generator=gen)
        loss = (model(x) - target(x).detach()).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def main() -> None:
    x = torch.randn(8, 256)
    for name, make in [
        ("uniform 4-bit QAT", lambda m: UniformQuantizer(m, bits=4, qat=True)),
        ("LSQ 3-bit", lambda m: LSQ(m, bits=3)),
    ]:
        model = make_model()
        quantizer = make(model)
        loss = fit(model, quantizer)
        model.eval()
        expected = model(x)
        dense = sum(p.numel() * 4 for n, p in model.named_parameters() if "_lsq" not in n)
        true_size = quantizer.true_model_size() * 2**20
        packed = pack_model(quantizer)  # weights stay packed; decoded during each forward
        assert torch.equal(packed(x), expected)
        print(
            f"{name}: train loss {loss:.4f}, float32 {dense} B, true size {true_size:.0f} B, "
            f"packed in memory {packed_nbytes_in_memory(packed)} B"
        )


if __name__ == "__main__":
    main()
