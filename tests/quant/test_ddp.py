"""Two-process gloo DistributedDataParallel training of a DiffQ model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import optiquant.quant as oq

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world
    )
    try:
        model = _model()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        quantizer = oq.DiffQuantizer(model, group_size=8, min_size=0)
        quantizer.setup_optimizer(opt)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        gen = torch.Generator().manual_seed(100 + rank)  # different data on each rank
        grads, values = [], []
        for _ in range(3):
            x = torch.randn(16, 64, generator=gen)
            y = torch.randint(0, 10, (16,), generator=gen)
            loss = torch.nn.functional.cross_entropy(ddp(x), y) + 1e-2 * quantizer.model_size()
            opt.zero_grad()
            loss.backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in quantizer.parameters()]))
            opt.step()
            values.append(torch.cat([p.detach().reshape(-1) for p in quantizer.parameters()]))
        local = torch.stack(grads + values)
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local)
        # Wrapping first and quantizing afterwards is refused.
        late = _model()
        wrapped = torch.nn.parallel.DistributedDataParallel(late)
        try:
            oq.DiffQuantizer(late, min_size=0)
            refused = ""
        except RuntimeError as exc:
            refused = str(exc)
        del wrapped
        if rank == 0:
            torch.save(
                {
                    "gathered": gathered,
                    "refused": refused,
                    "changed": bool(local[3].ne(local[4]).any()),
                },
                Path(folder) / "result.pt",
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_bits_identical_on_both_ranks(tmp_path) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    sys.path.insert(0, str(Path(__file__).parent))
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    result = torch.load(tmp_path / "result.pt", weights_only=True)
    a, b = result["gathered"]
    assert torch.equal(a, b)  # bits gradients (rows 0-2) and values (rows 3-5)
    assert bool(a[:3].abs().sum() > 0)
    assert "DistributedDataParallel" in result["refused"]
