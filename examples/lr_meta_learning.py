"""Meta-learning the inner learning rate through an unrolled optimizer.

Each task is a least-squares regression ``y = x w_task``. The inner loop runs 10 steps of
``optiquant.diff.MetaSGD`` with momentum whose learning rate is a tensor, ``exp(log_lr)``;
the loss after those steps is differentiable with respect to ``log_lr`` through the whole
unrolled loop, so the outer loop tunes the learning rate by gradient descent. The learned
value is compared with a grid search over the same tasks.

Run: ``python examples/lr_meta_learning.py`` (about 10 s on 2 CPU cores).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import optiquant.diff as diff

DIM, SAMPLES, INNER_STEPS = 10, 32, 10


def sample_tasks(n: int, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    scales = torch.linspace(0.3, 2.0, DIM)  # unequal feature scales: too large an lr diverges
    tasks = []
    for _ in range(n):
        x = torch.randn(SAMPLES, DIM, generator=gen) * scales
        w = torch.randn(DIM, 1, generator=gen)
        tasks.append((x, x @ w))
    return tasks


def loss_after_inner_loop(
    lr: torch.Tensor, task: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    x, y = task
    model = nn.Linear(DIM, 1, bias=False)
    nn.init.zeros_(model.weight)
    inner = diff.MetaSGD(model, lr=lr, momentum=0.5)
    for _ in range(INNER_STEPS):
        inner.step(nn.functional.mse_loss(model(x), y))
    return nn.functional.mse_loss(model(x), y)


def mean_loss(lr: torch.Tensor, tasks: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return torch.stack([loss_after_inner_loop(lr, task) for task in tasks]).mean()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="meta-learn an inner learning rate")
    parser.add_argument("--outer-steps", type=int, default=150)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest
    gen = torch.Generator().manual_seed(0)
    test_tasks = sample_tasks(20, torch.Generator().manual_seed(1))

    log_lr = torch.tensor(-5.0, requires_grad=True)  # lr = 0.0067: far too small
    outer = torch.optim.Adam([log_lr], lr=0.1)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(outer, args.outer_steps)
    start = float(mean_loss(log_lr.detach().exp(), test_tasks).detach())
    for step in range(args.outer_steps):
        outer.zero_grad()
        mean_loss(log_lr.exp(), sample_tasks(8, gen)).backward()
        outer.step()
        decay.step()
        if (step + 1) % 50 == 0:
            print(f"outer step {step + 1}: lr {float(log_lr.detach().exp()):.4f}")
    learned = float(log_lr.detach().exp())
    final = float(mean_loss(torch.tensor(learned), test_tasks).detach())

    grid = torch.logspace(-3, 0, 31)
    losses = torch.stack([mean_loss(lr, test_tasks).detach() for lr in grid])
    losses = torch.nan_to_num(losses, nan=float("inf"))
    best = int(losses.argmin())
    print(f"learned lr {learned:.4f}: loss after {INNER_STEPS} steps {start:.4f} -> {final:.4f}")
    print(f"grid search best lr {float(grid[best]):.4f}: loss {float(losses[best]):.4f}")
    return {"start": start, "final": final, "grid_best": float(losses[best]), "lr": learned}


if __name__ == "__main__":
    main()
