"""Worker for the 2-process DDP test (imported by the spawned processes)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from optiquant.psgd import Kron


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _train(seed: int, rank: int) -> list[torch.Tensor]:
    model = DistributedDataParallel(_model())
    opt = Kron(model.parameters(), lr=0.05, preconditioner_update_probability=0.5, seed=seed)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    for _ in range(4):
        x = torch.randn(16, 6, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def run(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        shared = _train(seed=7, rank=rank)
        # negative control: a rank-dependent seed must make the ranks drift apart
        local = _train(seed=7 + rank, rank=rank)
        torch.save(
            {"shared": shared, "local": local, "init": list(_model().parameters())},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()
