"""What the 2 worker processes run for the distributed tests (one launch for all parts).

Each part writes its results under the run's directory; the test files compare them
with single-process runs. ``prepare`` runs in the parent before the launch.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from dist_launch import free_port, load, save
from dist_models import KRON_OPTIONS, OPTIMIZERS, batch, local_batch, mlp, shard, train
from torch import nn

import optiquant as oq

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KRON_LR = 0.05
RESUME_STEPS = 3
DIFFQ_PENALTY = 0.1


# ----------------------------------------------------------------------- class optimizers
def optimizers_part(rank: int, world_size: int, tmp: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel

    x, y = local_batch(rank, world_size)
    out: dict[str, torch.Tensor] = {}
    for name, make in OPTIMIZERS.items():
        model = shard(mlp())
        train(model, make(model.parameters()), x, y)
        for key, p in model.named_parameters():
            out[f"fsdp|{name}|{key}"] = p.full_tensor()
        ddp = DistributedDataParallel(mlp())
        train(ddp, make(ddp.parameters()), x, y)
        for key, p in ddp.module.named_parameters():
            out[f"ddp|{name}|{key}"] = p.detach().clone()
    save(out, tmp / f"optimizers{rank}.pt")


# ------------------------------------------------------------------------ distributed Kron
def single_kron(model: nn.Module) -> Any:
    from optiquant.distributed import DistributedKron

    return DistributedKron(model.parameters(), lr=KRON_LR, **KRON_OPTIONS)


def prepare_kron(tmp: Path) -> None:
    """A one-process run and its checkpoint, for the world-size-1-to-2 reload."""
    from optiquant.distributed import save_checkpoint

    model = mlp()
    opt = single_kron(model)
    train(model, opt, *batch())
    save_checkpoint(opt, tmp / "kron_ck1")
    save(model.state_dict(), tmp / "kron_ws1_params.pt")


def _full(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.full_tensor() for k, p in model.named_parameters()}


def kron_part(rank: int, world_size: int, tmp: Path) -> None:
    from optiquant.distributed import check_optimizer, load_checkpoint, save_checkpoint

    x, y = local_batch(rank, world_size)
    model = shard(mlp())
    opt = single_kron(model)
    train(model, opt, x, y)
    save({"params": _full(model), "owners": torch.tensor(opt.owners)}, tmp / f"kron{rank}.pt")
    save_checkpoint(opt, tmp / "kron_ck2")
    save(opt.state_dict(), tmp / f"kron_state_dict{rank}.pt")

    model = mlp()
    model.load_state_dict(load(tmp / "kron_ws1_params.pt"))
    shard(model)
    opt = single_kron(model)
    load_checkpoint(opt, tmp / "kron_ck1")
    train(model, opt, x, y, steps=RESUME_STEPS)
    save(_full(model), tmp / f"kron_resumed{rank}.pt")

    messages: dict[str, str] = {}
    model = mlp()
    early = single_kron(model)
    shard(model)
    try:
        check_optimizer(model, early)
    except ValueError as exc:
        messages["check_optimizer"] = str(exc)
    ((model(x) - y) ** 2).mean().backward()
    try:
        early.step()
    except RuntimeError as exc:
        messages["step"] = str(exc)
    messages.update(_unsupported_setups(rank, world_size))
    save(messages, tmp / f"kron_errors{rank}.pt")


def _unsupported_setups(rank: int, world_size: int) -> dict[str, str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from optiquant.distributed import DistributedKron

    out = {}
    mesh2d = init_device_mesh("cpu", (world_size, 1))
    weight = nn.Parameter(distribute_tensor(torch.ones(4, 3), mesh2d, [Shard(0), Replicate()]))
    try:
        DistributedKron([weight])
    except ValueError as exc:
        out["mesh2d"] = str(exc)
    mismatched = nn.Parameter(torch.ones(3 + rank, 2))
    try:
        DistributedKron([mismatched])
    except ValueError as exc:
        out["different_params"] = str(exc)
    return out


# ------------------------------------------------------------------------------ quantizers
def quant_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8))


def quant_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 16, generator=gen), torch.randn(8, 8, generator=gen)


def diffq(model: nn.Module) -> tuple[Any, torch.optim.Optimizer]:
    from optiquant.quant import DiffQuantizer

    quantizer = DiffQuantizer(model, group_size=8, min_size=0)
    opt = oq.Adam(model.parameters(), lr=1e-2)
    quantizer.setup_optimizer(opt, lr=0.1)
    return quantizer, opt


def train_diffq(
    model: nn.Module,
    quantizer: Any,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    penalty: float,
    steps: int,
) -> None:
    torch.manual_seed(123)  # the same noise on every rank and in the single process
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        if penalty:
            loss = loss + penalty * quantizer.model_size()
        loss.backward()
        opt.step()


def quant_part(rank: int, world_size: int, tmp: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from optiquant.distributed import save_quantized

    x, y = (t.chunk(world_size)[rank] for t in quant_batch())
    model = quant_model()
    quantizer, opt = diffq(model)
    ddp = DistributedDataParallel(model)
    train_diffq(ddp, quantizer, opt, x, y, DIFFQ_PENALTY, steps=5)
    save({k: p.detach().clone() for k, p in model.named_parameters()}, tmp / f"diffq_ddp{rank}.pt")

    messages = {}
    try:
        diffq(DistributedDataParallel(quant_model()))
    except RuntimeError as exc:
        messages["quantizer_after_ddp"] = str(exc)
    save(messages, tmp / f"diffq_errors{rank}.pt")

    model = quant_model()
    quantizer, _ = diffq(model)
    shard(model)
    opt = oq.Adam(model.parameters(), lr=1e-2)
    train_diffq(model, quantizer, opt, x, y, 0.0, steps=3)
    save(_full(model), tmp / f"diffq_fsdp{rank}.pt")
    written = save_quantized(quantizer, tmp / "diffq_fsdp.safetensors")
    assert (written is not None) == (rank == 0)


# ------------------------------------------------------------------------------------- RPC
def square_sum(x: torch.Tensor) -> torch.Tensor:
    """Remote target of the partitioner test (module level: workers import it by name)."""
    return (x**2).sum()


def rpc_part(rank: int, world_size: int, tmp: Path) -> None:
    import torch.distributed.rpc as rpc

    import optiquant.distributed as odist

    sys.path.insert(0, str(EXAMPLES))
    import distributed_maml as maml

    options = rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://127.0.0.1:{_shared_port(rank, tmp)}", rpc_timeout=30
    )

    @odist.auto_init_rpc(rpc_backend_options=options)
    def session() -> None:
        if rank != 0:
            return
        params = maml.init_params()
        tasks = maml.make_tasks(4, seed=7)
        loss, grads = maml.meta_gradient_rpc(params, tasks)
        x = torch.arange(6.0).reshape(3, 2)
        total = odist.remote_sync_call(
            square_sum,
            args=(x,),
            partitioner=odist.exclusive_batch_partitioner,
            reducer=odist.sum_reducer,
        )
        save(
            {
                "loss": loss,
                "grads": list(grads),
                "square_sum": total,
                "worker_id": torch.tensor(odist.get_worker_id()),
                "other_id": torch.tensor(odist.get_worker_id("worker1")),
            },
            tmp / "rpc.pt",
        )

    session()


def _shared_port(rank: int, tmp: Path) -> int:
    import torch.distributed as dist

    port = torch.tensor([free_port() if rank == 0 else 0])
    dist.broadcast(port, src=0)
    return int(port)


# ------------------------------------------------------------------------------- together
PARTS = {
    "optimizers": optimizers_part,
    "kron": kron_part,
    "quant": quant_part,
    "rpc": rpc_part,
}


def all_parts(rank: int, world_size: int, tmp: Path) -> None:
    """Run every part; a failing part records its traceback and the others still run."""
    for name, part in PARTS.items():
        try:
            part(rank, world_size, tmp)
        except BaseException:
            (tmp / f"{name}.rank{rank}.failed").write_text(traceback.format_exc())
        else:
            (tmp / f"{name}.rank{rank}.done").write_text("ok")
