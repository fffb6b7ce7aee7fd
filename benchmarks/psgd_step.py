"""Step time of PSGD-Kron: optiquant vs kron-torch vs heavyball (and Adam as the baseline).

Configurations: (a) an MLP 784-512-512-10 (weights and biases), (b) 12 matrices 512x2048;
preconditioner update probability 1.0 and 0.03. Same hyperparameters everywhere
(lr 1e-3, b1 0.9, precond lr 0.1, init scale 1, triangular up to 8192). Fresh random
gradients every step; the timed region is ``optimizer.step()`` only.

Timing is the CPU time of the calling thread (``time.thread_time``) with one torch
thread, which stays meaningful on a shared machine. At p = 0.03 every implementation
refits once per 34 steps, so the mean over a window of 34 steps is the amortised cost;
the table shows that mean, and the median (a step without refit).

Peers missing from the environment are reported as skipped. kron-torch and heavyball
compile their kernels with torch.compile on the first steps; warm-up steps absorb that.

    python benchmarks/psgd_step.py                       # everything (slow on CPU)
    python benchmarks/psgd_step.py --config mlp --prob 1.0
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
import warnings

import torch

from optiquant.psgd import Kron

LR, B1, PRECOND_LR = 1e-3, 0.9, 0.1


def shapes(config: str) -> list[tuple[int, ...]]:
    if config == "mlp":
        return [(512, 784), (512,), (512, 512), (512,), (10, 512), (10,)]
    return [(512, 2048)] * 12


def make_optimizer(name: str, params: list[torch.nn.Parameter], prob: float):
    if name == "adam":
        return torch.optim.Adam(params, lr=LR, foreach=True)
    if name == "optiquant":
        return Kron(
            params,
            lr=LR,
            b1=B1,
            preconditioner_update_probability=prob,
            precond_lr=PRECOND_LR,
            precond_init_scale=1.0,
            max_size_triangular=8192,
        )
    if name == "kron-torch":
        from kron_torch import Kron as KT

        return KT(
            params,
            lr=LR,
            b1=B1,
            preconditioner_update_probability=prob,
            precond_lr=PRECOND_LR,
            precond_init_scale=1.0,
            max_size_triangular=8192,
        )
    if name == "heavyball":
        import heavyball

        return heavyball.PSGDKron(
            params,
            lr=LR,
            betas=(B1, 0.999),
            preconditioner_update_probability=prob,
            precond_lr=PRECOND_LR,
            precond_init_scale=1.0,
            max_size_triangular=8192,
        )
    raise ValueError(name)


def available(name: str) -> bool:
    module = {"kron-torch": "kron_torch", "heavyball": "heavyball"}.get(name)
    return module is None or importlib.util.find_spec(module) is not None


def state_mib(opt) -> float:
    def size(obj) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(size(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(size(v) for v in obj)
        return 0

    return size(list(opt.state.values())) / 2**20


def time_steps(
    name: str, config: str, prob: float, warmup: int, steps: int
) -> tuple[list[float], float]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes(config)]
    opt = make_optimizer(name, params, prob)
    pool = [[torch.randn(s) for s in shapes(config)] for _ in range(4)]
    times = []
    for i in range(warmup + steps):
        for p, g in zip(params, pool[i % len(pool)]):
            p.grad = g.clone()
        start = time.thread_time()
        opt.step()
        elapsed = time.thread_time() - start
        if i >= warmup:
            times.append(elapsed * 1e3)
    return times, state_mib(opt)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=["mlp", "tfm", "all"], default="all")
    parser.add_argument("--prob", type=float, nargs="*", default=[1.0, 0.03])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--steps", type=int, default=0, help="timed steps (default: 5 at p=1, 34 otherwise)"
    )
    parser.add_argument(
        "--peers", nargs="*", default=["optiquant", "kron-torch", "heavyball", "adam"]
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    configs = ["mlp", "tfm"] if args.config == "all" else [args.config]
    rows = []
    for config in configs:
        for prob in args.prob:
            steps = args.steps or (5 if prob >= 1.0 else 34)
            results: dict[str, tuple[float, float, float] | None] = {}
            for name in args.peers:
                if not available(name):
                    results[name] = None
                    continue
                # p < 1: warm up past every implementation's first refit (kron-torch and
                # heavyball refit first at step ceil(1/p)), then time whole periods
                warm = args.warmup if prob >= 1.0 else max(args.warmup, 40)
                t, mem = time_steps(name, config, prob, warm, steps)
                results[name] = (statistics.median(t), statistics.fmean(t), mem)
                print(
                    f"  {config} p={prob} {name}: median {results[name][0]:.1f} ms, "
                    f"mean {results[name][1]:.1f} ms, state {mem:.1f} MiB",
                    flush=True,
                )
            rows.append((config, prob, results))
    ours_key = "optiquant"
    print()
    print(
        "| config | p | implementation | median ms | mean ms | state MiB | mean vs optiquant "
        "| mean vs Adam |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for config, prob, results in rows:
        ours = results.get(ours_key)
        adam = results.get("adam")
        for name, res in results.items():
            if res is None:
                print(f"| {config} | {prob} | {name} | skipped (not installed) | | | | |")
                continue
            vs_ours = f"{res[1] / ours[1]:.2f}x" if ours else "-"
            vs_adam = f"{res[1] / adam[1]:.1f}x" if adam else "-"
            print(
                f"| {config} | {prob} | {name} | {res[0]:.1f} | {res[1]:.1f} | {res[2]:.1f} "
                f"| {vs_ours} | {vs_adam} |"
            )
        if ours:
            for peer in ("kron-torch", "heavyball"):
                res = results.get(peer)
                if res:
                    print(f"|   | | optiquant / {peer} (mean) | {ours[1] / res[1]:.2f}x | | | | |")


if __name__ == "__main__":
    main()
