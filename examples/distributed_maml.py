"""MAML on sine-wave regression with the tasks of each meta-batch spread over RPC workers.

Two processes on one machine (rank 0 drives, every rank adapts its share of the tasks):

    torchrun --nnodes=1 --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29511 \\
        examples/distributed_maml.py

Rank 0 owns the meta-parameters. ``meta_loss`` is parallelized: calling it sends each
worker the parameters and its slice of the tasks over ``torch.distributed.rpc``; every
worker adapts a copy of the model to each of its tasks with a few differentiable SGD
steps (optiquant's functional ``sgd`` with ``inplace=False``) and returns the mean
query loss; the two means are averaged. The meta-gradient comes back through
distributed autograd and equals the one-process meta-gradient. Run with plain
``python`` it trains in one process.
"""

from __future__ import annotations

import math

import torch

import optiquant as oq
import optiquant.distributed as odist

DTYPE = torch.float64


def init_params(seed: int = 0, hidden: int = 16) -> dict[str, torch.Tensor]:
    """Meta-parameters of a 1-hidden-layer tanh network (they require grad)."""
    gen = torch.Generator().manual_seed(seed)
    params = {
        "w0": torch.randn(hidden, 1, generator=gen, dtype=DTYPE),
        "b0": torch.zeros(hidden, dtype=DTYPE),
        "w1": torch.randn(1, hidden, generator=gen, dtype=DTYPE) / math.sqrt(hidden),
        "b1": torch.zeros(1, dtype=DTYPE),
    }
    return {k: v.requires_grad_() for k, v in params.items()}


def make_tasks(n_tasks: int, shots: int = 5, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Support and query sets ``(T, shots, 1)`` of random sine waves ``a sin(x + phase)``."""
    gen = torch.Generator().manual_seed(seed)
    amp = 0.1 + 4.9 * torch.rand(n_tasks, 1, 1, generator=gen, dtype=DTYPE)
    phase = math.pi * torch.rand(n_tasks, 1, 1, generator=gen, dtype=DTYPE)
    x_spt = 10 * torch.rand(n_tasks, shots, 1, generator=gen, dtype=DTYPE) - 5
    x_qry = 10 * torch.rand(n_tasks, shots, 1, generator=gen, dtype=DTYPE) - 5
    return x_spt, amp * torch.sin(x_spt + phase), x_qry, amp * torch.sin(x_qry + phase)


def forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The network's prediction for inputs ``x`` of shape ``(n, 1)``."""
    h = torch.tanh(x @ params["w0"].T + params["b0"])
    return h @ params["w1"].T + params["b1"]


def adapt(
    params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int, lr: float
) -> dict[str, torch.Tensor]:
    """``steps`` differentiable SGD steps on one task's support set."""
    tx = oq.sgd(lr)
    state = tx.init(params)
    for _ in range(steps):
        loss = ((forward(params, x) - y) ** 2).mean()
        grads = dict(
            zip(params, torch.autograd.grad(loss, list(params.values()), create_graph=True))
        )
        updates, state = tx.update(grads, state, params, inplace=False)
        params = oq.apply_updates(params, updates, inplace=False)
    return params


def task_losses(
    params: dict[str, torch.Tensor],
    x_spt: torch.Tensor,
    y_spt: torch.Tensor,
    x_qry: torch.Tensor,
    y_qry: torch.Tensor,
    inner_steps: int = 2,
    inner_lr: float = 0.02,
) -> torch.Tensor:
    """Mean query loss over the tasks given, each after adaptation on its support set."""
    losses = []
    for t in range(x_spt.shape[0]):
        fast = adapt(params, x_spt[t], y_spt[t], inner_steps, inner_lr)
        losses.append(((forward(fast, x_qry[t]) - y_qry[t]) ** 2).mean())
    return torch.stack(losses).mean()


@odist.parallelize(
    partitioner=odist.dim_partitioner(0, shared=(0, "params")), reducer=odist.mean_reducer
)
def meta_loss(
    params: dict[str, torch.Tensor],
    x_spt: torch.Tensor,
    y_spt: torch.Tensor,
    x_qry: torch.Tensor,
    y_qry: torch.Tensor,
) -> torch.Tensor:
    """:func:`task_losses` with the tasks split over the RPC workers (parameters shared)."""
    return task_losses(params, x_spt, y_spt, x_qry, y_qry)


def meta_gradient_local(
    params: dict[str, torch.Tensor], tasks: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Meta-loss and meta-gradient in this process alone."""
    loss = task_losses(params, *tasks)
    return loss.detach(), torch.autograd.grad(loss, list(params.values()))


def meta_gradient_rpc(
    params: dict[str, torch.Tensor], tasks: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """Meta-loss and meta-gradient with the tasks spread over the RPC workers."""
    with odist.autograd.context() as context_id:
        loss = meta_loss(params, *tasks)
        grads = odist.autograd.grad(context_id, loss, list(params.values()))
    return loss.detach(), grads


def validation_loss(params: dict[str, torch.Tensor]) -> float:
    """Mean query loss after adaptation on 16 fixed held-out tasks."""
    return float(task_losses(params, *make_tasks(16, seed=0)).detach())


def train(meta_steps: int = 60, n_tasks: int = 8, distributed: bool = False) -> tuple[float, float]:
    """Meta-train with Adam; returns the validation loss before and after."""
    params = init_params()
    opt = oq.Adam(params.values(), lr=3e-2)
    before = validation_loss(params)
    step_fn = meta_gradient_rpc if distributed else meta_gradient_local
    for step in range(meta_steps):
        _, grads = step_fn(params, make_tasks(n_tasks, seed=100 + step))
        for p, g in zip(params.values(), grads):
            p.grad = g
        opt.step()
    return before, validation_loss(params)


def report(losses: tuple[float, float]) -> None:
    """Print the validation loss before and after meta-training."""
    print(f"validation loss after adaptation: {losses[0]:.3f} before, {losses[1]:.3f} after")


@odist.auto_init_rpc()
def rpc_main() -> None:
    """Every rank serves RPC; rank 0 runs the meta-training loop."""
    if odist.get_world_rank() == 0:
        report(train(distributed=True))


if __name__ == "__main__":
    if odist.get_world_size() > 1:
        rpc_main()
    else:
        report(train())
