"""A first look at optiquant: the same model trained with a class optimizer and functionally.

Run: ``python examples/quickstart.py`` (a few seconds on a laptop CPU).
"""

from __future__ import annotations

import torch

import optiquant as oq


def make_data(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen)
    y = torch.sin(x[:, :1] * 2) + 0.5 * x[:, 1:2] ** 2
    return x, y


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))


def train_with_class(steps: int = 300) -> float:
    """torch.optim-style: optiquant.Adam is a torch.optim.Optimizer (schedulers work)."""
    x, y = make_data()
    model = make_model()
    opt = oq.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(x), y))


def train_functionally(steps: int = 300) -> float:
    """optax-style: a GradientTransformation over a dict of tensors, with torch.func."""
    x, y = make_data()
    model = make_model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    tx = oq.chain(
        oq.clip_grad_norm(1.0),
        oq.adamw(lr=oq.schedule.cosine_decay_schedule(1e-2, steps), weight_decay=1e-4),
    )
    state = tx.init(params)

    def loss_fn(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.mse_loss(torch.func.functional_call(model, p, (x,)), y)

    grad_fn = torch.func.grad(loss_fn)
    for _ in range(steps):
        updates, state = tx.update(grad_fn(params), state, params)
        params = oq.apply_updates(params, updates)
    return float(loss_fn(params))


def main() -> None:
    print(f"optiquant {oq.__version__}")
    print(f"class Adam + cosine scheduler : final MSE {train_with_class():.4f}")
    print(f"functional clip + AdamW       : final MSE {train_functionally():.4f}")


if __name__ == "__main__":
    main()
