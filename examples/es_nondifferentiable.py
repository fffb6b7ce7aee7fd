"""Evolution strategies on a non-differentiable objective with optiquant.diff.zero_order.

A linear classifier is trained on its 0-1 error, which is piecewise constant: autograd's
gradient is zero almost everywhere, so gradient descent cannot move. ``zero_order``
replaces the gradient by an antithetic ES estimate of the gradient of the Gaussian-smoothed
error, and an ordinary torch optimizer follows it.

Run: ``python examples/es_nondifferentiable.py`` (a few seconds).
"""

from __future__ import annotations

import argparse

import torch

import optiquant.diff as diff

DIM, SAMPLES = 5, 400


def make_data(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes split by a hyperplane, with 5% of labels flipped."""
    x = torch.randn(SAMPLES, DIM, generator=gen)
    w_true = torch.randn(DIM, generator=gen)
    y = (x @ w_true > 0.3).float()
    flip = torch.rand(SAMPLES, generator=gen) < 0.05
    return x, torch.where(flip, 1 - y, y)


def zero_one_error(
    w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """The fraction of misclassified points (a step function of w and b)."""
    predictions = (x @ w + b > 0).float()
    return (predictions != y).float().mean()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="ES on the 0-1 error")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    x, y = make_data(torch.Generator().manual_seed(0))

    w = torch.zeros(DIM, requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    with torch.no_grad():
        w[0] = 1.0  # start from an arbitrary hyperplane

    plain = zero_one_error(w, b, x, y)
    print(f"autograd sees no path from the 0-1 error to w, b: requires_grad={plain.requires_grad}")

    smoothed = diff.zero_order(
        torch.distributions.Normal(0.0, 1.0),
        method="antithetic",
        argnums=(0, 1),
        num_samples=20,
        sigma=0.3,
    )(zero_one_error)
    start = float(zero_one_error(w, b, x, y))
    optimizer = torch.optim.Adam([w, b], lr=0.05)
    for step in range(args.steps):
        optimizer.zero_grad()
        smoothed(w, b, x, y).backward()
        optimizer.step()
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}: 0-1 error {float(zero_one_error(w, b, x, y)):.3f}")
    final = float(zero_one_error(w, b, x, y))
    print(f"0-1 error: {start:.3f} -> {final:.3f} (5% of the labels are flipped)")
    return {"start": start, "final": final}


if __name__ == "__main__":
    main()
