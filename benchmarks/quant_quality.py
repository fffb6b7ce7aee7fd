"""Accuracy vs true model size on scikit-learn's digits: optiquant vs diffq side by side.

Run: ``python benchmarks/quant_quality.py [--plot benchmarks/quant_quality.png]``
(diffq is measured when installed).

An MLP 64-256-256-10 is trained in float32, then each quantized configuration
fine-tunes a copy of it with the same seeds, data order and optimizer (Adam) for
both libraries: uniform QAT 8 and 4 bits, LSQ 4 bits, DiffQ (group_size 8) at three
size penalties (bits learning rate 3e-2), each with several seeds. Reported: test
accuracy in eval mode (quantized weights), the library's own ``true_model_size()``,
the bytes of the file each library writes (optiquant: ``save_quantized``; diffq:
``torch.save(get_quantized_state())``) and, for DiffQ, the mean stored bits of each
layer.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import io
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine_line, print_table

import optiquant.quant as oq
from optiquant.io import save_quantized

HAS_DIFFQ = importlib.util.find_spec("diffq") is not None

CONFIGS: dict[str, dict[str, Any]] = {
    "uniform 8b QAT": {"kind": "uniform", "bits": 8, "qat": True},
    "uniform 4b QAT": {"kind": "uniform", "bits": 4, "qat": True},
    "LSQ 4b": {"kind": "lsq", "bits": 4},
    "DiffQ penalty 0.1": {"kind": "diffq", "penalty": 0.1},
    "DiffQ penalty 1": {"kind": "diffq", "penalty": 1.0},
    "DiffQ penalty 10": {"kind": "diffq", "penalty": 10.0},
    # The quantile-table noise: another random stream (diffq has no such option).
    "DiffQ penalty 1, fast_noise=True": {"kind": "diffq", "penalty": 1.0, "fast_noise": True},
}


def load_data() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    cut = int(0.7 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def train(
    model: nn.Module,
    data: tuple[torch.Tensor, ...],
    epochs: int,
    opt: torch.optim.Optimizer,
    size_fn: Any = None,
    penalty: float = 0.0,
) -> None:
    x, y = data[0], data[1]
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            if penalty:
                loss = loss + penalty * size_fn()
            opt.zero_grad()
            loss.backward()
            opt.step()


def accuracy(model: nn.Module, data: tuple[torch.Tensor, ...]) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(data[2]).argmax(1) == data[3]).float().mean())


def run(
    lib: str, spec: dict[str, Any], base: nn.Module, data, epochs: int, seed: int
) -> dict[str, Any]:
    spec = dict(spec)
    kind = spec.pop("kind")
    penalty = spec.pop("penalty", 0.0)
    model = copy.deepcopy(base)
    torch.manual_seed(10 + seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if lib == "optiquant":
        classes: dict[str, Any] = {
            "uniform": oq.UniformQuantizer, "lsq": oq.LSQ, "diffq": oq.DiffQuantizer,
        }  # fmt: skip
    else:
        import diffq

        classes = {
            "uniform": diffq.UniformQuantizer,
            "lsq": diffq.LSQ,
            "diffq": diffq.DiffQuantizer,
        }
        spec.pop("fast_noise", None)
    kwargs: dict[str, Any] = {"min_size": 0.001}
    if kind == "diffq":
        kwargs["group_size"] = 8
    quantizer = classes[kind](model, **kwargs, **spec)
    if kind == "diffq":
        quantizer.setup_optimizer(opt, lr=3e-2)  # bits learn fast enough for a short run
    elif kind == "lsq":
        quantizer.setup_optimizer(opt)
    train(model, data, epochs, opt, quantizer.model_size, penalty)
    acc = accuracy(model, data)
    if lib == "optiquant":
        with tempfile.TemporaryDirectory() as tmp:
            file_bytes = save_quantized(quantizer, Path(tmp) / "m.safetensors").stat().st_size
    else:
        buf = io.BytesIO()
        torch.save(quantizer.get_quantized_state(), buf)
        file_bytes = buf.tell()
    layer_bits: list[float] = []
    if kind == "diffq":
        for name, p in model.named_parameters():
            if name.endswith("_diffq") and name.split(".")[-1].startswith("weight"):
                bits = quantizer._get_bits(p) if lib == "diffq" else quantizer.get_bits(p)
                layer_bits.append(float(bits.detach().round().clamp(1, 15).mean()))
    return {
        "acc": acc,
        "true_mb": float(quantizer.true_model_size()),
        "file_kb": file_bytes / 1024,
        "bits": layer_bits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--finetune", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--plot", type=str, default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_line())
    if not HAS_DIFFQ:
        print("diffq: skipped (not installed)")
    data = load_data()
    base = make_model()
    train(base, data, args.epochs, torch.optim.Adam(base.parameters(), lr=1e-3))
    fp32_acc = accuracy(base, data)
    fp32_mb = sum(p.numel() * 4 for p in base.parameters()) / 2**20
    results: dict[tuple[str, str], dict[str, Any]] = {}
    libs = ["optiquant"] + (["diffq"] if HAS_DIFFQ else [])
    for name, spec in CONFIGS.items():
        for lib in libs:
            runs = [run(lib, spec, base, data, args.finetune, seed) for seed in range(args.seeds)]
            results[(name, lib)] = {
                "acc": statistics.mean(r["acc"] for r in runs),
                "acc_std": statistics.pstdev(r["acc"] for r in runs),
                "true_mb": statistics.mean(r["true_mb"] for r in runs),
                "file_kb": statistics.mean(r["file_kb"] for r in runs),
                "bits": [statistics.mean(b) for b in zip(*(r["bits"] for r in runs))],
            }
    rows: list[list[object]] = [
        ["fp32", f"{fp32_acc:.4f}", f"{fp32_mb:.4f}", "", "", "", "", "", ""]
    ]

    def acc_cell(r: dict[str, Any]) -> str:
        return f"{r['acc']:.4f} ± {r['acc_std']:.4f}"

    for name in CONFIGS:
        ours = results[(name, "optiquant")]
        row: list[object] = [
            name,
            acc_cell(ours),
            f"{ours['true_mb']:.4f}",
            f"{ours['file_kb']:.1f}",
            "/".join(f"{b:.1f}" for b in ours["bits"]),
        ]
        if HAS_DIFFQ:
            theirs = results[(name, "diffq")]
            row += [
                acc_cell(theirs),
                f"{theirs['true_mb']:.4f}",
                f"{theirs['file_kb']:.1f}",
                "/".join(f"{b:.1f}" for b in theirs["bits"]),
            ]
        else:
            row += ["skipped", "", "", ""]
        rows.append(row)
    print_table(
        f"digits MLP 64-256-256-10: fp32 {args.epochs} epochs, then {args.finetune} epochs "
        f"of quantized fine-tuning (mean ± std over {args.seeds} seeds)",
        [
            "config",
            "optiquant acc",
            "optiquant true MB",
            "optiquant file KB",
            "optiquant bits/layer",
            "diffq acc",
            "diffq true MB",
            "diffq file KB",
            "diffq bits/layer",
        ],
        rows,
    )
    if args.plot:
        plot(args.plot, fp32_acc, fp32_mb, results, libs)


def plot(path: str, fp32_acc: float, fp32_mb: float, results, libs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"optiquant": "o", "diffq": "x"}
    for lib in libs:
        xs = [results[(n, lib)]["true_mb"] for n in CONFIGS]
        ys = [results[(n, lib)]["acc"] for n in CONFIGS]
        ax.scatter(xs, ys, marker=markers[lib], label=lib, s=45)
        for n, xv, yv in zip(CONFIGS, xs, ys):
            if lib == "optiquant":
                ax.annotate(n, (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.scatter([fp32_mb], [fp32_acc], marker="*", s=90, label="fp32")
    ax.set_xlabel("true model size (MB)")
    ax.set_ylabel("test accuracy (eval, quantized)")
    ax.set_title("digits: accuracy vs size")
    ax.legend()
    diffq_names = [n for n in CONFIGS if CONFIGS[n]["kind"] == "diffq" and "fast" not in n]
    width = 0.8 / max(1, len(diffq_names) * len(libs))
    for i, (n, lib) in enumerate((n, lib) for n in diffq_names for lib in libs):
        bits = results[(n, lib)]["bits"]
        pos = [j + (i - len(diffq_names) * len(libs) / 2) * width for j in range(len(bits))]
        bx.bar(pos, bits, width=width, label=f"{lib} {n}")
    bx.set_xticks(range(3), ["layer 1", "layer 2", "layer 3"])
    bx.set_ylabel("mean stored bits")
    bx.set_title("DiffQ bits per layer")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
