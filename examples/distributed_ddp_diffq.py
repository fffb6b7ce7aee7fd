"""DiffQ quantization-aware training under DistributedDataParallel, saved from one rank.

Two processes on one machine (CPU, gloo):

    torchrun --nnodes=1 --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29513 \\
        examples/distributed_ddp_diffq.py --out /tmp/model.safetensors

The quantizer is attached to the bare model *before* ``DistributedDataParallel`` wraps
it, so DDP also averages the gradients of the learned bit widths: every rank keeps the
same bits. Every rank seeds the global RNG alike, so DiffQ's training noise is the same
everywhere. Rank 0 writes the quantized file. Run with plain ``python`` it trains in
one process.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import optiquant as oq
import optiquant.distributed as odist
from optiquant.quant import DiffQuantizer


def make_model() -> nn.Sequential:
    """A small MLP with fixed initial weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))


def make_batch(step: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of a fixed linear-plus-noise teacher (the same on every rank)."""
    gen = torch.Generator().manual_seed(step)
    teacher = torch.randn(16, 8, generator=torch.Generator().manual_seed(1234)) / 4
    x = torch.randn(size, 16, generator=gen)
    return x, x @ teacher + 0.01 * torch.randn(size, 8, generator=gen)


def train(steps: int = 100, penalty: float = 1e-2) -> tuple[DiffQuantizer, float, float]:
    """Train; returns the quantizer, the last task loss and the stored size in MB."""
    rank, world = odist.get_world_rank(), odist.get_world_size()
    model = make_model()
    quantizer = DiffQuantizer(model, group_size=8, min_size=0)  # before DDP
    opt = oq.Adam(model.parameters(), lr=3e-3)
    quantizer.setup_optimizer(opt, lr=3e-2)
    net: nn.Module = DistributedDataParallel(model) if world > 1 else model
    torch.manual_seed(1)  # the same training noise on every rank
    loss = torch.zeros(())
    for step in range(steps):
        x, y = make_batch(step)
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        (loss + penalty * quantizer.model_size()).backward()
        opt.step()
    return quantizer, float(loss.detach()), quantizer.true_model_size()


def main() -> None:
    parser = argparse.ArgumentParser(description="DDP + DiffQ example")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default=None, help="write the quantized model here")
    args = parser.parse_args()
    if odist.get_world_size() > 1:
        dist.init_process_group("gloo")
    try:
        quantizer, loss, size = train(args.steps)
        if args.out:
            odist.save_quantized(quantizer, args.out)
        if odist.get_world_rank() == 0:
            print(f"last loss {loss:.4f}, quantized size {size * 1024:.1f} KiB")
    finally:
        if dist.is_initialized():
            dist.barrier()  # nobody tears the connections down while a peer still uses them
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
