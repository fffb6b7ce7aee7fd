"""Throughput of quantize + pack and unpack + dequantize on 16M float32 values.

optiquant's ``quantize``/``dequantize`` against distquant 0.1.0 with the same
call (``dist='gaussian'``, fixed ``beta=1``, ``packbits=True``), in one run.
Times are medians of ``--repeats`` runs (distquant: ``--dq-repeats``); GB/s is
the float32 input size (64 MiB) divided by the time. optiquant's outputs reuse the
memory of released ones (:mod:`optiquant.quant.memory`); a line after the table
times dequantize with that cache off, every output in new memory. Also the cost of the
searches relative to a fixed beta: ``beta=None`` and ``dist=None`` for
optiquant (on the 16M values) and distquant's ``beta=None`` (on the 16M
values) and ``dist=None`` (on 1M values, scaled by 16: it is too slow).

Run: ``python benchmarks/distquant_speed.py``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from optiquant.quant import kernels, memory
from optiquant.quant.distributional import dequantize, quantize

N = 16 * 2**20
GB = N * 4 / 1e9


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dq-repeats", type=int, default=3)
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)"
    )
    parser.add_argument(
        "--no-kernels", action="store_true", help="optiquant without its compiled kernels"
    )
    args = parser.parse_args()
    if args.no_kernels:
        os.environ["OPTIQUANT_KERNELS"] = "0"
    kernels.warm_up()
    torch.set_num_threads(args.threads)
    x = torch.randn(N, generator=torch.Generator().manual_seed(0))
    has_dq = importlib.util.find_spec("distquant") is not None
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"# 16M float32 (64 MiB), {platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {datetime.date.today()}, "
          f"load average at start {load}, compiled kernels "
          f"{'on' if kernels.available() else 'off'}")  # fmt: skip
    print()
    print("| k | optiquant quantize+pack s (GB/s) | optiquant unpack+dequantize s (GB/s) | "
          "distquant quantize+pack s (GB/s) | distquant dequantize s (GB/s) | "
          "speedup quantize | speedup dequantize |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    fixed: dict[int, float] = {}
    dq_times: dict[int, float | None] = {}
    for k in args.bits:
        q, info = quantize(x, k=k, beta=1.0)
        for _ in range(2):  # warm-up: first touches of fresh memory are slow on some VMs
            quantize(x, k=k, beta=1.0)
            dequantize(q, **info)
        t_q = median_time(lambda k=k: quantize(x, k=k, beta=1.0), args.repeats)
        t_d = median_time(lambda q=q, info=info: dequantize(q, **info), args.repeats)
        fixed[k] = t_q
        if has_dq:
            import distquant

            dq, dinfo = distquant.quantize(x, k=k, dist="gaussian", beta=1.0)
            tq_dq = median_time(
                lambda k=k: distquant.quantize(x, k=k, dist="gaussian", beta=1.0),
                args.dq_repeats,
            )
            # distquant's dequantize shifts its input in place: time it on fresh copies
            copies = iter([dq.clone() for _ in range(args.dq_repeats)])

            def dq_decode(it=copies, info=dinfo) -> Any:
                return distquant.dequantize(next(it), **info)

            td_dq = median_time(dq_decode, args.dq_repeats)
            dq_cols = (
                f"{tq_dq:.3f} ({GB / tq_dq:.2f}) | {td_dq:.3f} ({GB / td_dq:.2f}) | "
                f"{tq_dq / t_q:.1f}x | {td_dq / t_d:.1f}x"
            )
        else:
            dq_cols = "skipped | skipped | - | -"
        print(f"| {k} | {t_q:.3f} ({GB / t_q:.2f}) | {t_d:.3f} ({GB / t_d:.2f}) | {dq_cols} |",
              flush=True)  # fmt: skip
        dq_times[k] = td_dq if has_dq else None
    print()
    # Outputs come from optiquant.quant.memory, which reuses the blocks of released
    # outputs. Without it each output is new memory: page faults and zeroing first.
    limit = memory.cache_limit()
    memory.set_cache_limit(0)
    fresh = []
    for k in args.bits:
        q, info = quantize(x, k=k, beta=1.0)
        t = median_time(lambda q=q, info=info: dequantize(q, **info), args.repeats)
        ratio = f" ({dq_times[k] / t:.0f}x distquant)" if dq_times[k] is not None else ""
        fresh.append(f"k={k}: {t:.3f} s{ratio}")
    t_floor = median_time(lambda: np.empty(N, dtype=np.float32).fill(1.0), args.repeats)
    memory.set_cache_limit(limit)
    print(f"output cache off (every output in new memory), unpack+dequantize: {', '.join(fresh)}")
    print(
        f"floor for new memory: a fresh 64 MiB float32 array, allocated and filled once "
        f"(numpy), takes {t_floor:.3f} s"
    )
    print()
    k = 4 if 4 in fixed else args.bits[0]
    t_beta = median_time(lambda: quantize(x, k=k), max(1, args.repeats // 2))
    t_dist = median_time(lambda: quantize(x, k=k, dist=None), max(1, args.repeats // 2))
    t_lloyd = median_time(lambda: quantize(x, k=k, dist="lloyd"), max(1, args.repeats // 2))
    print(f"search cost at k={k}, relative to a fixed beta ({fixed[k]:.3f} s):")
    print()
    print("| call | optiquant s (x fixed beta) | distquant s (x fixed beta) |")
    print("|---|---|---|")
    dq_beta = dq_dist = "skipped"
    if has_dq:
        import distquant

        tq_fixed = median_time(lambda: distquant.quantize(x, k=k, beta=1.0), 1)
        t = median_time(lambda: distquant.quantize(x, k=k, beta=None), 1)
        dq_beta = f"{t:.2f} ({t / tq_fixed:.0f}x)"
        small = x[: 2**20]
        t_small_fixed = median_time(lambda: distquant.quantize(small, k=k, beta=1.0), 1)
        t = median_time(lambda: distquant.quantize(small, k=k, dist=None), 1)
        dq_dist = f"{t * 16:.0f} (est. from 1M: {t / t_small_fixed:.0f}x)"
    print(f"| beta=None | {t_beta:.3f} ({t_beta / fixed[k]:.1f}x) | {dq_beta} |")
    print(f"| dist=None | {t_dist:.3f} ({t_dist / fixed[k]:.1f}x) | {dq_dist} |")
    print(f"| dist='lloyd' | {t_lloyd:.3f} ({t_lloyd / fixed[k]:.1f}x) | n/a |")


if __name__ == "__main__":
    main()
