"""Learning a ridge penalty by implicit differentiation (hyperparameter optimization).

The inner problem is ridge regression on a training set, ``w*(lam) = argmin_w
||X w - y||^2 / (2n) + lam / 2 ||w||^2``. The outer problem picks ``lam`` to minimise the
validation error of ``w*(lam)``. ``optiquant.diff.custom_root`` differentiates ``w*`` through
its optimality condition (the gradient of the inner objective is zero), so the outer loop
is plain gradient descent on ``log lam``. The result is compared with a grid search.

Run: ``python examples/ridge_implicit.py`` (a few seconds).
"""

from __future__ import annotations

import argparse

import torch

import optiquant.diff as diff

N_TRAIN, N_VAL, DIM = 60, 200, 40


def make_data(gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A noisy linear problem with fewer samples than a plain fit would need."""
    w_true = torch.randn(DIM, generator=gen, dtype=torch.float64) * (
        torch.rand(DIM, generator=gen) < 0.3
    )
    x = torch.randn(N_TRAIN + N_VAL, DIM, generator=gen, dtype=torch.float64)
    y = x @ w_true + 1.5 * torch.randn(N_TRAIN + N_VAL, generator=gen, dtype=torch.float64)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def gradient(w: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The gradient of the inner objective: zero at the ridge solution."""
    return x.T @ (x @ w - y) / x.shape[0] + lam * w


@diff.custom_root(gradient, argnums=1, solve=diff.solve_cg(rtol=1e-10))
def ridge(w0: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The inner solver (any solver works; this one uses conjugate gradient from ``w0``)."""
    return diff.linalg.cg(
        lambda v: x.T @ (x @ v) / x.shape[0] + lam * v, x.T @ y / x.shape[0], w0, rtol=1e-12
    )


def validation_loss(lam: torch.Tensor, data: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, y, xv, yv = data
    w = ridge(torch.zeros(DIM, dtype=torch.float64), lam, x, y)
    return 0.5 * ((xv @ w - yv) ** 2).mean()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="learn a ridge penalty")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)
    data = make_data(torch.Generator().manual_seed(0))

    log_lam = torch.tensor(-4.0, dtype=torch.float64, requires_grad=True)  # lam = 0.018
    outer = torch.optim.Adam([log_lam], lr=0.1)
    start = float(validation_loss(log_lam.exp(), data).detach())
    for step in range(args.steps):
        outer.zero_grad()
        loss = validation_loss(log_lam.exp(), data)
        loss.backward()
        outer.step()
        if (step + 1) % 25 == 0:
            print(
                f"step {step + 1}: lam {float(log_lam.detach().exp()):.4f}, "
                f"validation loss {float(loss.detach()):.4f}"
            )
    learned = float(log_lam.detach().exp())
    final = float(validation_loss(log_lam.exp(), data).detach())

    with torch.no_grad():
        grid = torch.logspace(-4, 2, 121, dtype=torch.float64)
        losses = torch.stack([validation_loss(lam, data) for lam in grid])
    best = int(losses.argmin())
    print(f"learned lam {learned:.4f} (validation loss {start:.4f} -> {final:.4f})")
    print(
        f"grid search best lam {float(grid[best]):.4f} (validation loss {float(losses[best]):.4f})"
    )
    return {"start": start, "final": final, "grid_best": float(losses[best]), "lam": learned}


if __name__ == "__main__":
    main()
