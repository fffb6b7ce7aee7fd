"""MSE of optiquant's distributional quantizers vs distquant on 1M N(0, 1) samples, k = 1..8.

Columns: the exact Lloyd-Max optimum (MSE of the optimal scalar quantizer of
N(0, 1), computed here), optiquant ``dist='lloyd'`` (fitted codebook),
optiquant ``dist='gaussian'`` with its MSE search of ``beta`` and with
``beta=1``, and distquant's best of its 18 settings (9 dists x beta in {1, None})
with the winning setting, plus distquant ``gaussian`` with beta=1. Checks: lloyd
within 1% of the optimum; optiquant gaussian (MSE search) no worse than
distquant's best. distquant runs with ``packbits=False``; a setting whose
output contains NaN (its CDF saturation bug) counts as failed.

Run: ``python benchmarks/distquant_quality.py``.
"""

from __future__ import annotations

import datetime
import importlib.util
import math
import platform
import time

import torch

from optiquant.quant.codebook import gaussian_lloyd_max
from optiquant.quant.distributional import DISTS, dequantize, quantize


def mse(x: torch.Tensor, y: torch.Tensor) -> float:
    v = float(((x.double() - y.double()) ** 2).mean())
    return v if math.isfinite(v) else math.inf


def main() -> None:
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1_000_000, generator=gen)
    has_dq = importlib.util.find_spec("distquant") is not None
    dq_state = "installed" if has_dq else "skipped (not installed)"
    print(f"# 1M N(0,1) samples (seed 0); {platform.machine()}, torch {torch.__version__}, "
          f"{datetime.date.today()}; distquant {dq_state}")  # fmt: skip
    print()
    print("| k | Lloyd-Max optimum | optiquant lloyd (ratio) | optiquant gaussian, MSE beta "
          "(beta) | optiquant gaussian beta=1 | distquant best (setting) | distquant gaussian "
          "beta=1 | lloyd <= 1.01x | gaussian <= distquant best |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    t_oq = t_dq = 0.0
    for k in range(1, 9):
        _, opt = gaussian_lloyd_max(2**k)
        t0 = time.perf_counter()
        q, info = quantize(x, k=k, dist="lloyd")
        m_lloyd = mse(x, dequantize(q, **info))
        q, info = quantize(x, k=k, dist="gaussian")
        m_gs, beta_gs = mse(x, dequantize(q, **info)), info["beta"]
        q, info = quantize(x, k=k, dist="gaussian", beta=1.0)
        m_g1 = mse(x, dequantize(q, **info))
        t_oq += time.perf_counter() - t0
        best, best_name, m_dq_g1 = math.inf, "skipped", math.nan
        if has_dq:
            import distquant

            t0 = time.perf_counter()
            for dist in DISTS:
                for beta in (1.0, None):
                    try:
                        dq, dinfo = distquant.quantize(x, k=k, dist=dist, beta=beta, packbits=False)
                        m = mse(x, distquant.dequantize(dq, **dinfo).reshape(-1))
                    except Exception:  # distquant raises on some settings
                        m = math.inf
                    if dist == "gaussian" and beta == 1.0:
                        m_dq_g1 = m
                    if m < best:
                        best, best_name = m, f"{dist} beta={beta}"
            t_dq += time.perf_counter() - t0
        ok1 = m_lloyd <= 1.01 * opt
        ok2 = (m_gs <= best) if has_dq else None
        v1 = "yes" if ok1 else "NO"
        v2 = "skipped" if ok2 is None else "yes" if ok2 else "NO"
        print(f"| {k} | {opt:.6g} | {m_lloyd:.6g} ({m_lloyd / opt:.4f}) | {m_gs:.6g} "
              f"({beta_gs:.3f}) | {m_g1:.6g} | {best:.6g} ({best_name}) | {m_dq_g1:.6g} | "
              f"{v1} | {v2} |", flush=True)  # fmt: skip
    print()
    print(f"time: optiquant {t_oq:.1f} s for 24 quantize+dequantize calls; "
          f"distquant {t_dq:.1f} s for its 144 settings")  # fmt: skip


if __name__ == "__main__":
    main()
