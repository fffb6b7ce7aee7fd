"""Quantizer speed: optiquant vs diffq 0.2.4 in the same run.

Run: ``python benchmarks/quant_speed.py`` (diffq is measured when installed).

Times are medians of the CPU time of the calling thread (torch uses one thread).

(a) Training step (forward, backward, Adam step; DiffQ adds ``1e-3 * model_size()``)
    of an MLP 784-1024-1024-10 on a batch of 128: plain, DiffQ group_size 1 and 8,
    uniform QAT 4 bits, LSQ 4 bits. Ratios are against the plain step of the same run.
(b) ``get_quantized_state()`` (packed) and restoring it with the module function
    ``restore_quantized_state(model, state)`` on 10 x Linear(1024, 1024) (10.5M
    parameters). Before each ``get_quantized_state()`` the first layer's weight
    changes (``add_(0.0)``), so that tensor is quantized and packed again while the
    nine others reuse their cached packed encodings (after checking them against a
    content fingerprint); rows marked "all weights changed" bump the version of every
    weight instead, so every tensor is quantized and packed again. diffq caches
    nothing: its work is the same in both cases.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine_line, print_table

import optiquant.quant as oq

HAS_DIFFQ = importlib.util.find_spec("diffq") is not None


def median_times(
    variants: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds per call, round-robin; CPU time of this thread (torch runs on one
    thread here), which other jobs on a shared machine disturb far less than wall time."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.thread_time()
            fn()
            samples[name].append(time.thread_time() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )


def big_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(10)])


QUANT_MODES: dict[str, dict[str, Any]] = {
    "DiffQ gs=1": {"kind": "diffq", "group_size": 1},
    "DiffQ gs=8": {"kind": "diffq", "group_size": 8},
    "DiffQ gs=8, fast_noise": {"kind": "diffq", "group_size": 8, "fast_noise": True},
    "Uniform QAT 4b": {"kind": "uniform", "bits": 4, "qat": True},
    "LSQ 4b": {"kind": "lsq", "bits": 4},
}


def make_quantizer(lib: str, model: nn.Module, spec: dict[str, Any]) -> Any:
    spec = dict(spec)
    kind = spec.pop("kind")
    if lib != "optiquant":
        spec.pop("fast_noise", None)  # diffq has one noise source
    if lib == "optiquant":
        classes: dict[str, Any] = {
            "diffq": oq.DiffQuantizer, "uniform": oq.UniformQuantizer, "lsq": oq.LSQ,
        }  # fmt: skip
    else:
        import diffq

        classes = {
            "diffq": diffq.DiffQuantizer,
            "uniform": diffq.UniformQuantizer,
            "lsq": diffq.LSQ,
        }
    return classes[kind](model, **spec)


def train_step_fn(lib: str | None, spec: dict[str, Any] | None) -> Callable[[], object]:
    model = mlp()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(128, 784, generator=gen)
    y = torch.randint(0, 10, (128,), generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    quantizer = None
    if lib is not None and spec is not None:
        quantizer = make_quantizer(lib, model, spec)
        if spec["kind"] in ("diffq", "lsq"):
            quantizer.setup_optimizer(opt)
    penalty = spec is not None and spec["kind"] == "diffq"
    model.train()

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        if penalty:
            loss = loss + 1e-3 * quantizer.model_size()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


STATE_MODES: dict[str, dict[str, Any]] = {
    "Uniform 4b": {"kind": "uniform", "bits": 4},
    "DiffQ gs=1, 8 bits": {"kind": "diffq", "group_size": 1},
    "DiffQ gs=8, logits U(-1,1)": {"kind": "diffq", "group_size": 8, "random": True},
    "LSQ 4b": {"kind": "lsq", "bits": 4},
    "Uniform 4b, all weights changed": {"kind": "uniform", "bits": 4, "all": True},
    "DiffQ gs=8, logits U(-1,1), all weights changed": {
        "kind": "diffq", "group_size": 8, "random": True, "all": True,
    },
    "LSQ 4b, all weights changed": {"kind": "lsq", "bits": 4, "all": True},
}  # fmt: skip


def state_fns(lib: str, spec: dict[str, Any]) -> tuple[Callable[[], object], Callable[[], object]]:
    spec = dict(spec)
    randomize = spec.pop("random", False)
    touch_all = spec.pop("all", False)
    model = big_model()
    quantizer = make_quantizer(lib, model, spec)
    if randomize:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("_diffq"):
                    p.copy_(torch.empty(p.shape).uniform_(-1, 1, generator=gen))
    target = big_model()
    states: list[Any] = []
    weight = next(model.parameters())
    weights = [m.weight for m in model]

    def pack() -> None:
        with torch.no_grad():
            weight.add_(0.0)  # a weight update: its cached quantization cannot be reused
        if touch_all:
            for w in weights:  # a new version for every weight, without touching the data
                torch.autograd.graph.increment_version(w)
        states[:] = [quantizer.get_quantized_state()]

    pack()
    if lib == "optiquant":

        def restore() -> None:
            oq.restore_quantized_state(target, states[0])

    else:
        import diffq

        def restore() -> None:
            diffq.restore_quantized_state(target, states[0])

    return pack, restore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="must stay 1 for CPU timing")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--part", choices=["a", "b", "all"], default="all")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    libs = ["optiquant"] + (["diffq"] if HAS_DIFFQ else [])
    print(machine_line())
    if not HAS_DIFFQ:
        print("diffq: skipped (not installed)")

    if args.part in ("a", "all"):
        variants: dict[str, Callable[[], object]] = {"plain": train_step_fn(None, None)}
        for lib in libs:
            for mode, spec in QUANT_MODES.items():
                variants[f"{lib}|{mode}"] = train_step_fn(lib, spec)
        times = median_times(variants, repeats=args.repeats, warmup=3)
        plain = times["plain"]
        rows: list[list[object]] = [["plain", f"{plain * 1e3:.1f}", "1.00", "", "", ""]]
        for mode in QUANT_MODES:
            ours = times[f"optiquant|{mode}"]
            row: list[object] = [mode, f"{ours * 1e3:.1f}", f"{ours / plain:.2f}"]
            if HAS_DIFFQ:
                theirs = times[f"diffq|{mode}"]
                row += [f"{theirs * 1e3:.1f}", f"{theirs / plain:.2f}", f"{theirs / ours:.2f}"]
            else:
                row += ["skipped", "", ""]
            rows.append(row)
        print_table(
            "(a) train step, MLP 784-1024-1024-10, batch 128, Adam (median ms)",
            ["mode", "optiquant ms", "x plain", "diffq ms", "diffq x plain", "diffq / optiquant"],
            rows,
        )

    if args.part in ("b", "all"):
        rows = []
        for mode, spec in STATE_MODES.items():
            fns: dict[str, Callable[[], object]] = {}
            for lib in libs:
                pack, restore = state_fns(lib, spec)
                fns[f"{lib}|pack"] = pack
                fns[f"{lib}|restore"] = restore
            times = median_times(fns, repeats=max(3, args.repeats // 3), warmup=1)
            ours_p, ours_r = times["optiquant|pack"], times["optiquant|restore"]
            row = [mode, f"{ours_p * 1e3:.0f}", f"{ours_r * 1e3:.0f}"]
            if HAS_DIFFQ:
                p, r = times["diffq|pack"], times["diffq|restore"]
                row += [
                    f"{p * 1e3:.0f}",
                    f"{r * 1e3:.0f}",
                    f"{p / ours_p:.1f}",
                    f"{r / ours_r:.1f}",
                    f"{(p + r) / (ours_p + ours_r):.1f}",
                ]
            else:
                row += ["skipped"] + [""] * 4
            rows.append(row)
            del fns
        print_table(
            "(b) get_quantized_state + restore_quantized_state, 10 x Linear(1024,1024) (median ms)",
            [
                "quantizer",
                "optiquant pack",
                "optiquant restore",
                "diffq pack",
                "diffq restore",
                "pack speedup",
                "restore speedup",
                "total speedup",
            ],
            rows,
        )


if __name__ == "__main__":
    main()
