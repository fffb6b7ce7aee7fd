"""The end-to-end demonstration behind ``optiquant demo``.

A small CNN learns scikit-learn's ``load_digits`` (shipped with scikit-learn, no
download) with Adam and with PSGD Kron, then is compressed with uniform 8-bit
post-training rounding, uniform 4-bit quantization-aware training, LSQ 4-bit, DiffQ at
two size penalties and distributional (Lloyd-Max) post-training quantization. The run
prints a table, saves the best compressed model in the safe file format, loads it back
into a fresh model and checks its accuracy, and plots accuracy against size and the bits
DiffQ chose per layer.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

import optiquant as oq
from optiquant.io import load_quantized, save_quantized
from optiquant.psgd import kron
from optiquant.quant import LSQ, BaseQuantizer, DiffQuantizer, UniformQuantizer
from optiquant.quant.ptq import DistributionalQuantizer

__all__ = ["DemoResult", "DemoRow", "SmallCNN", "load_digits_split", "run_demo"]


class SmallCNN(nn.Module):
    """Two 3x3 convolutions and two linear layers for 8x8 digit images.

    >>> SmallCNN()(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of ``(N, 1, 8, 8)`` images."""
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@dataclass(frozen=True)
class Split:
    """Train and test tensors."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> Split:
    """``load_digits`` as ``(N, 1, 8, 8)`` float tensors in [0, 1], split reproducibly.

    >>> split = load_digits_split()
    >>> split.x_train.shape[1:], int(split.y_test.max())
    (torch.Size([1, 8, 8]), 9)
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train], x[test], y[test])


@dataclass
class DemoRow:
    """One line of the demo's table.

    >>> row = DemoRow("Adam", "LSQ 4-bit", accuracy=0.97, size_kb=5.0, ratio=8.0, seconds=1.5)
    >>> row.method, row.ratio
    ('LSQ 4-bit', 8.0)
    """

    optimizer: str
    method: str
    accuracy: float
    size_kb: float
    ratio: float
    seconds: float


@dataclass
class DemoResult:
    """What the demo produced: its rows, the saved model and the reload check.

    >>> row = DemoRow("Adam", "LSQ 4-bit", 0.97, 5.0, 8.0, 1.5)
    >>> result = DemoResult([row], row, Path("best.safetensors"), 0.97, 0.97, Path("demo.png"))
    >>> print(result.table().splitlines()[-1])
    | Adam | LSQ 4-bit | 97.00% | 5.00 | 8.0x |
    >>> result.to_dict()["best"]["method"]
    'LSQ 4-bit'
    """

    rows: list[DemoRow]
    best: DemoRow
    saved_path: Path
    reloaded_accuracy: float
    in_memory_accuracy: float
    plot_path: Path
    diffq_bits: dict[str, dict[str, float]] = field(default_factory=dict)

    def table(self) -> str:
        """The rows as a Markdown table."""
        lines = [
            "| optimizer | method | test accuracy | true size (KB) | compression |",
            "|---|---|---:|---:|---:|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.optimizer} | {r.method} | {100 * r.accuracy:.2f}% | {r.size_kb:.2f} | "
                f"{r.ratio:.1f}x |"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "rows": [asdict(r) for r in self.rows],
            "best": asdict(self.best),
            "saved_path": str(self.saved_path),
            "reloaded_accuracy": self.reloaded_accuracy,
            "in_memory_accuracy": self.in_memory_accuracy,
            "plot_path": str(self.plot_path),
            "diffq_bits": self.diffq_bits,
        }


def _batches(
    split: Split, batch: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(split.y_train), generator=generator)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        yield split.x_train[idx], split.y_train[idx]


@torch.no_grad()
def _accuracy(model: nn.Module, split: Split) -> float:
    model.eval()
    return float((model(split.x_test).argmax(1) == split.y_test).float().mean())


def _train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    split: Split,
    epochs: int,
    seed: int,
    desc: str,
    penalty: Callable[[], torch.Tensor] | None = None,
    progress: bool = True,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    model.train()
    steps = epochs * math.ceil(len(split.y_train) / 64)
    with tqdm(total=steps, desc=desc, leave=False, disable=not progress) as bar:
        for _ in range(epochs):
            for xb, yb in _batches(split, 64, generator):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(xb), yb)
                if penalty is not None:
                    loss = loss + penalty()
                loss.backward()
                optimizer.step()
                bar.update(1)
    model.eval()


def _float_kb(model: nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 1024


class _Compressor:
    """Compresses copies of one trained model and records a row per method."""

    def __init__(
        self, opt_name: str, base: nn.Module, split: Split, finetune: int, seed: int, progress: bool
    ) -> None:
        self.opt_name = opt_name
        self.base = base
        self.split = split
        self.finetune = finetune
        self.seed = seed
        self.progress = progress
        self.float_kb = _float_kb(base)
        self.rows: list[DemoRow] = []
        self.quantizers: dict[tuple[str, str], tuple[BaseQuantizer, nn.Module]] = {}

    def run(
        self,
        method: str,
        build: Callable[[nn.Module], BaseQuantizer],
        *,
        lr: float | None = None,
        penalty_weight: float = 0.0,
        quantizer_lr: float | None = None,
    ) -> BaseQuantizer:
        """Attach ``build``'s quantizer to a copy, fine-tune it if ``lr`` is given, record it."""
        begin = time.perf_counter()
        model = copy.deepcopy(self.base)
        quantizer = build(model)
        if lr is not None:
            opt = oq.Adam(model.parameters(), lr=lr)
            quantizer.setup_optimizer(opt, **({} if quantizer_lr is None else {"lr": quantizer_lr}))
            penalty = (lambda: penalty_weight * quantizer.model_size()) if penalty_weight else None
            _train(
                model,
                opt,
                self.split,
                self.finetune,
                self.seed + 1,
                f"{self.opt_name} {method}",
                penalty,
                self.progress,
            )
        model.eval()
        size_kb = quantizer.true_model_size() * 1024
        self.rows.append(
            DemoRow(
                self.opt_name,
                method,
                _accuracy(model, self.split),
                size_kb,
                self.float_kb / size_kb,
                time.perf_counter() - begin,
            )
        )
        self.quantizers[(self.opt_name, method)] = (quantizer, model)
        return quantizer


def run_demo(
    out_dir: str | Path = "demo_out",
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demonstration and write its artefacts to ``out_dir``.

    ``quick`` shortens every training phase (for tests; under a minute on 2 CPU cores).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:  # doctest: +SKIP
    ...     result = run_demo(tmp, quick=True, progress=False, log=lambda s: None)
    """
    threads = torch.get_num_threads()
    # The model is tiny: one thread is as fast and does not stall on a busy machine.
    torch.set_num_threads(1)
    try:
        return _run(Path(out_dir), quick, seed, progress, log)
    finally:
        torch.set_num_threads(threads)


def _run(
    out: Path, quick: bool, seed: int, progress: bool, log: Callable[[str], None]
) -> DemoResult:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    split = load_digits_split(seed)
    epochs, finetune = (6, 1) if quick else (25, 4)
    rows: list[DemoRow] = []
    quantizers: dict[tuple[str, str], tuple[BaseQuantizer, nn.Module]] = {}
    diffq_bits: dict[str, dict[str, float]] = {}

    def fresh_model() -> nn.Module:
        torch.manual_seed(seed)
        return SmallCNN()

    trainers: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
        "Adam": lambda m: oq.Adam(m.parameters(), lr=3e-3),
        "PSGD Kron": lambda m: oq.Optimizer(
            list(m.parameters()),
            kron(
                learning_rate=1e-3, b1=0.9, preconditioner_update_probability=1.0 if quick else None
            ),
        ),
    }
    for opt_name, make_opt in trainers.items():
        start = time.perf_counter()
        base = fresh_model()
        _train(base, make_opt(base), split, epochs, seed, f"{opt_name} training", progress=progress)
        rows.append(
            DemoRow(
                opt_name,
                "float32",
                _accuracy(base, split),
                _float_kb(base),
                1.0,
                time.perf_counter() - start,
            )
        )
        log(f"{opt_name}: float32 test accuracy {100 * rows[-1].accuracy:.2f}%")
        bench = _Compressor(opt_name, base, split, finetune, seed, progress)
        bench.run(
            "uniform 8-bit (post-training)", lambda m: UniformQuantizer(m, bits=8, min_size=0)
        )
        bench.run(
            "uniform 4-bit (QAT)",
            lambda m: UniformQuantizer(m, bits=4, qat=True, min_size=0),
            lr=1e-3,
        )
        bench.run("LSQ 4-bit", lambda m: LSQ(m, bits=4, min_size=0), lr=1e-3)
        for weight in (5.0, 50.0):
            quantizer = bench.run(
                f"DiffQ (penalty {weight:g})",
                lambda m: DiffQuantizer(m, group_size=8, min_size=0, exclude=("*bias",)),
                lr=1e-3,
                penalty_weight=weight,
                quantizer_lr=0.1,
            )
            assert isinstance(quantizer, DiffQuantizer)
            diffq_bits[f"{opt_name}, penalty {weight:g}"] = {
                name: float(width.float().mean()) for name, width in quantizer.get_widths().items()
            }
        bench.run(
            "distributional 4-bit (Lloyd-Max)",
            lambda m: DistributionalQuantizer(m, bits=4, method="lloyd", group_size=64, min_size=0),
        )
        rows.extend(bench.rows)
        quantizers.update(bench.quantizers)

    best = _pick_best(rows)
    quantizer, model = quantizers[(best.optimizer, best.method)]
    saved = save_quantized(quantizer, out / "best_model.safetensors")
    reloaded = load_quantized(fresh_model(), saved)
    reloaded_accuracy = _accuracy(reloaded, split)
    in_memory = _accuracy(model, split)
    plot = _plot(rows, diffq_bits, out / "demo.png")
    result = DemoResult(rows, best, saved, reloaded_accuracy, in_memory, plot, diffq_bits)
    log(result.table())
    log(f"best: {best.optimizer} / {best.method} -> {saved} ({best.size_kb:.2f} KB)")
    log(
        f"reloaded from file: accuracy {100 * reloaded_accuracy:.2f}% "
        f"(in memory {100 * in_memory:.2f}%)"
    )
    log(f"plot: {plot}")
    return result


def _pick_best(rows: list[DemoRow]) -> DemoRow:
    """The smallest compressed model within one point of the best float accuracy."""
    best_float = max(r.accuracy for r in rows if r.method == "float32")
    compressed = [r for r in rows if r.method != "float32"]
    good = [r for r in compressed if r.accuracy >= best_float - 0.01]
    if good:
        return min(good, key=lambda r: (r.size_kb, -r.accuracy))
    return max(compressed, key=lambda r: (r.accuracy, -r.size_kb))


def _plot(rows: list[DemoRow], diffq_bits: dict[str, dict[str, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for opt_name, marker in (("Adam", "o"), ("PSGD Kron", "s")):
        mine = [r for r in rows if r.optimizer == opt_name]
        left.scatter(
            [r.size_kb for r in mine],
            [100 * r.accuracy for r in mine],
            marker=marker,
            label=opt_name,
        )
        for r in mine:
            left.annotate(
                r.method.split(" (")[0],
                (r.size_kb, 100 * r.accuracy),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    left.set_xscale("log")
    left.set_xlabel("true size (KB, log scale)")
    left.set_ylabel("test accuracy (%)")
    left.set_title("accuracy vs size")
    left.legend()
    names = sorted({name for bits in diffq_bits.values() for name in bits})
    width = 0.8 / max(len(diffq_bits), 1)
    for i, (label, bits) in enumerate(diffq_bits.items()):
        right.bar(
            [j + i * width for j in range(len(names))],
            [bits.get(n, 0.0) for n in names],
            width,
            label=label,
        )
    right.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30, fontsize=8
    )
    right.set_ylabel("mean bits per weight")
    right.set_title("bits DiffQ chose per layer")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
