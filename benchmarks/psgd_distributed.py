"""Per-rank Kron preconditioner time with DistributedKron on 1 and 2 processes.

Twelve 1024x1024 parameters (float32), the preconditioner fitted at every step
(``preconditioner_update_probability=1``), one CPU thread per process, gloo. Each run is
a fresh set of processes on this machine; every rank reports the median over the timed
steps of the time it spent fitting and applying the preconditioners it owns, as CPU time
of its process (what the rank's own work costs, whatever else runs on the machine) and
as wall-clock time, and the wall-clock time of the whole ``step()`` (communication
included). The per-rank figure of a run is its slowest rank. Target: 2 processes at
most 0.6x the 1-process preconditioner time. On a shared machine the wall-clock columns
also measure the other users' load; the CPU-time column does not.

Run: ``python benchmarks/psgd_distributed.py [--steps 3] [--size 1024] [--count 12]``.
Peer: kron-torch's ``DistributedKron`` needs CUDA and NCCL, so it is reported as
skipped on a CPU machine.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine_line, print_table


def _worker(
    rank: int, world_size: int, init: str, out: str, size: int, count: int, steps: int
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=init,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=600),
    )
    from optiquant.distributed import DistributedKron

    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(size, size, generator=gen)) for _ in range(count)]
    opt = DistributedKron(params, lr=1e-3, preconditioner_update_probability=1.0)
    precond, cpu, total = [], [], []
    for step in range(steps + 1):  # the first step (state creation) is not timed
        for p in params:
            p.grad = torch.randn(size, size, generator=gen)
        dist.barrier()
        opt.step()
        if step:
            precond.append(opt.last_step_seconds["precondition"])
            cpu.append(opt.last_step_seconds["precondition_cpu"])
            total.append(opt.last_step_seconds["total"])
    owned = sum(1 for o in opt.owners if o == rank)
    row = torch.tensor(
        [statistics.median(cpu), statistics.median(precond), statistics.median(total), owned],
        dtype=torch.float64,
    )
    rows = [torch.zeros(4, dtype=row.dtype) for _ in range(world_size)]
    dist.all_gather(rows, row)
    if rank == 0:
        torch.save(torch.stack(rows), out)
    dist.barrier()
    dist.destroy_process_group()


def run(world_size: int, size: int, count: int, steps: int) -> torch.Tensor:
    """``(world_size, 4)``: per rank, median preconditioner CPU s and wall s, median step
    wall s, matrices owned."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.pt")
        os.environ["OMP_NUM_THREADS"] = "1"
        mp.start_processes(
            _worker,
            args=(world_size, f"file://{tmp}/rendezvous", out, size, count, steps),
            nprocs=world_size,
            start_method="spawn",
        )
        return torch.load(out, weights_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    results = {ws: run(ws, args.size, args.count, args.steps) for ws in (1, 2)}
    base_cpu = float(results[1][:, 0].max())
    base_wall = float(results[1][:, 1].max())
    rows = []
    for ws, table in results.items():
        cpu, wall = float(table[:, 0].max()), float(table[:, 1].max())
        per_rank = ", ".join(
            f"r{r}: {int(t[3])} mats, {float(t[0]):.2f} s cpu" for r, t in enumerate(table)
        )
        rows.append(
            [
                f"optiquant DistributedKron, {ws} process{'es' if ws > 1 else ''}",
                f"{cpu:.3f}",
                f"{cpu / base_cpu:.2f}x",
                f"{wall:.3f}",
                f"{wall / base_wall:.2f}x",
                f"{float(table[:, 2].max()):.3f}",
                per_rank,
            ]
        )
    peer = "skipped (needs CUDA + NCCL)"
    if importlib.util.find_spec("kron_torch") is None:
        peer = "skipped (not installed; needs CUDA + NCCL)"
    rows.append(["kron-torch DistributedKron", peer, "", "", "", "", ""])
    print_table(
        f"Kron preconditioner per rank, {args.count} matrices {args.size}x{args.size}, "
        f"fit every step, median of {args.steps} steps, slowest rank",
        [
            "run",
            "precondition CPU s",
            "vs 1 process",
            "precondition wall s",
            "vs 1 process",
            "whole step wall s",
            "per rank",
        ],
        rows,
    )
    for label, col, base in (("CPU", 0, base_cpu), ("wall", 1, base_wall)):
        ratio = float(results[2][:, col].max()) / base
        verdict = "met" if ratio <= 0.6 else "NOT met"
        print(f"target <= 0.60x with 2 processes, {label} time: {ratio:.2f}x ({verdict})")
    print(f"{machine_line()}; 1 thread per process; {time.perf_counter() - started:.0f} s total")


if __name__ == "__main__":
    main()
