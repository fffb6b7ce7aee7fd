"""Shared timing helpers for the benchmark scripts (medians over interleaved repeats)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch


class Prepared:
    """A variant whose ``prepare()`` runs, untimed, before every timed ``run()``."""

    def __init__(self, run: Callable[[], object], prepare: Callable[[], object]) -> None:
        self.run = run
        self.prepare = prepare

    def __call__(self) -> object:
        self.prepare()
        return self.run()


def median_times(
    variants: dict[str, Callable[[], object]], repeats: int = 15, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each variant, measured round-robin so load hits all alike.

    A :class:`Prepared` variant is timed without its ``prepare()`` step.
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            run = fn
            if isinstance(fn, Prepared):
                fn.prepare()
                run = fn.run
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Print (and return) a Markdown table."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def machine_line() -> str:
    """A line naming the machine, threads and torch version."""
    import platform

    return (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )
