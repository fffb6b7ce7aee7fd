"""FSDP2-sharded regression with PSGD Kron, the preconditioner work split over the ranks.

Two processes on one machine (CPU, gloo):

    torchrun --nnodes=1 --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29512 \\
        examples/distributed_fsdp_kron.py --checkpoint /tmp/kron_ckpt

Each rank holds half of every parameter (``fully_shard``) and trains on half of each
batch. ``DistributedKron`` gives every parameter's Kron preconditioner to one rank,
which fits and applies it; the ranks exchange gradient shards and preconditioned
directions with two ``all_to_all`` calls per step. With ``--checkpoint`` the optimizer
state is written with ``torch.distributed.checkpoint``; ``load_checkpoint`` reads it
back on any number of processes. Run with plain ``python`` it trains in one process,
without sharding, and prints the same losses.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch import nn

import optiquant.distributed as odist


def make_model() -> nn.Sequential:
    """A small MLP with fixed initial weights."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )


def make_batch(step: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of a fixed smooth regression problem (the same on every rank)."""
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(size, 8, generator=gen)
    y = torch.sin(2 * x[:, :1]) + 0.5 * x[:, 1:2]
    return x, y


def shard(model: nn.Sequential) -> nn.Sequential:
    """FSDP2: every Linear, then the whole model."""
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def train(steps: int = 60, checkpoint: str | None = None) -> list[float]:
    """Train and return the global batch loss of every step."""
    rank, world = odist.get_world_rank(), odist.get_world_size()
    model = make_model()
    if world > 1:
        shard(model)
    opt = odist.DistributedKron(model.parameters(), lr=3e-3, preconditioner_update_probability=0.5)
    losses = []
    for step in range(steps):
        x, y = make_batch(step)
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        total = loss.detach().clone()
        if world > 1:
            dist.all_reduce(total)
        losses.append(float(total) / world)
    if checkpoint:
        odist.save_checkpoint(opt, checkpoint)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description="FSDP2 + DistributedKron example")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--checkpoint", default=None, help="write the optimizer state here")
    args = parser.parse_args()
    if odist.get_world_size() > 1:
        dist.init_process_group("gloo")
    try:
        losses = train(args.steps, args.checkpoint)
        if odist.get_world_rank() == 0:
            print(f"loss: first {losses[0]:.4f}, last {losses[-1]:.4f}")
    finally:
        if dist.is_initialized():
            dist.barrier()  # nobody tears the connections down while a peer still uses them
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
