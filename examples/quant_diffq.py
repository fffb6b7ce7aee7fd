"""DiffQ with optiquant: learn the bits of a classifier, save it at its packed size, reload it.

Run: ``python examples/quant_diffq.py`` (about ten seconds on a laptop CPU; needs
scikit-learn for the digits data set).

Coming from diffq, only the import changes: ``from optiquant.quant import DiffQuantizer``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from optiquant.io import load_quantized, save_quantized
from optiquant.quant import DiffQuantizer


def data() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1200], y[:1200], x[1200:], y[1200:]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()  # eval mode: the forward uses the quantized weights
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main(epochs: int = 15, penalty: float = 1.0) -> None:
    x, y, x_test, y_test = data()
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    quantizer = DiffQuantizer(model, group_size=8, min_size=0.001)
    quantizer.setup_optimizer(optimizer, lr=3e-2)  # a param group for the bits, no decay
    for _ in range(epochs):
        model.train()  # training mode: pseudo quantization noise
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            loss = loss + penalty * quantizer.model_size()  # differentiable size in MB
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    fp32_mb = sum(p.numel() * 4 for n, p in model.named_parameters() if "_diffq" not in n)
    print(f"float32 size: {fp32_mb / 2**20:.4f} MB")
    print(f"true quantized size: {quantizer.true_model_size():.4f} MB")
    print("bits per group, layer by layer:", {
        name: round(float(w.float().mean()), 2) for name, w in quantizer.get_widths().items()
    })  # fmt: skip
    acc = accuracy(model, x_test, y_test)
    print(f"test accuracy (quantized): {acc:.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = save_quantized(quantizer, Path(tmp) / "digits.safetensors")
        print(f"file: {path.stat().st_size} bytes")
        fresh = load_quantized(make_model(), path)  # no quantizer needed to load
        assert accuracy(fresh, x_test, y_test) == acc


if __name__ == "__main__":
    main()
