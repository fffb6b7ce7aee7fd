"""Train a small MLP on scikit-learn's digits with the PSGD-Kron torch.optim class.

python examples/psgd_kron_digits.py
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from optiquant.psgd import Kron


def main(steps: int = 200) -> float:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=gen)
    train, test = perm[:1437], perm[1437:]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 10))
    opt = Kron(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for step in range(steps):
        idx = train[torch.randint(len(train), (64,), generator=gen)]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step:4d}  batch loss {loss.item():.4f}")
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    print(f"test accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    main()
