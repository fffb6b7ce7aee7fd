"""MAML on sinusoid regression with optiquant.diff.MetaSGD (Finn et al., 2017).

Each task is y = a sin(x + p) with a random amplitude a and phase p; the model sees 10
points of a task, takes 5 SGD steps on them (the inner loop), and is scored on 10 other
points of the same task. The outer loop learns an initialisation from which those 5 steps
work well, by differentiating the query loss through the inner steps.

Run: ``python examples/maml_sinusoid.py`` (about 15 s on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import optiquant.diff as diff

SHOTS = 10
INNER_STEPS = 5
INNER_LR = 0.02


def sample_tasks(n: int, gen: torch.Generator) -> list[tuple[torch.Tensor, ...]]:
    """``n`` tasks, each (x_support, y_support, x_query, y_query)."""
    tasks = []
    for _ in range(n):
        amplitude = 0.1 + 4.9 * torch.rand((), generator=gen)
        phase = math.pi * torch.rand((), generator=gen)
        x = 10 * torch.rand(2 * SHOTS, 1, generator=gen) - 5
        y = amplitude * torch.sin(x + phase)
        tasks.append((x[:SHOTS], y[:SHOTS], x[SHOTS:], y[SHOTS:]))
    return tasks


def make_net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1)
    )


def adapted_loss(
    net: nn.Module, inner: diff.MetaSGD, task: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    xs, ys, xq, yq = task
    for _ in range(INNER_STEPS):
        inner.step(nn.functional.mse_loss(net(xs), ys))
    return nn.functional.mse_loss(net(xq), yq)


def evaluate(net: nn.Module, tasks: list[tuple[torch.Tensor, ...]]) -> float:
    """Mean query loss after adaptation (the network is restored afterwards)."""
    inner = diff.MetaSGD(net, lr=INNER_LR)
    start = diff.extract_state_dict(net)
    total = 0.0
    for task in tasks:
        total += float(adapted_loss(net, inner, task).detach())
        diff.recover_state_dict(net, start)
    return total / len(tasks)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="MAML on sinusoids")
    parser.add_argument("--outer-steps", type=int, default=600)
    parser.add_argument("--tasks-per-step", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    test_tasks = sample_tasks(50, torch.Generator().manual_seed(1))

    net = make_net()
    baseline = evaluate(make_net(), test_tasks)  # a random initialisation, adapted the same way
    outer = torch.optim.Adam(net.parameters(), lr=1e-3)
    inner = diff.MetaSGD(net, lr=INNER_LR)
    start = diff.extract_state_dict(net)  # references to the meta-parameters
    for step in range(args.outer_steps):
        outer.zero_grad()
        for task in sample_tasks(args.tasks_per_step, gen):
            (adapted_loss(net, inner, task) / args.tasks_per_step).backward()
            diff.recover_state_dict(net, start)  # back to the meta-parameters for the next task
        outer.step()
        if (step + 1) % 200 == 0:
            print(
                f"outer step {step + 1}: query loss after adaptation "
                f"{evaluate(net, test_tasks):.3f}"
            )
    result = {"random_init": baseline, "maml": evaluate(net, test_tasks)}
    print(
        f"mean query MSE after {INNER_STEPS} steps on {SHOTS} points: "
        f"random init {result['random_init']:.3f}, MAML init {result['maml']:.3f}"
    )
    return result


if __name__ == "__main__":
    main()
