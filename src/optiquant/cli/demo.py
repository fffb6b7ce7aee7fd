"""``optiquant demo``: train, compress, save and reload a small CNN on ``load_digits``."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand to ``subparsers``.

    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> register(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["demo", "--quick"]).quick
    True
    """
    parser = subparsers.add_parser(
        "demo",
        help="train a small CNN with Adam and PSGD Kron, compress it six ways, save and reload it",
        description=(
            "Train a small CNN on scikit-learn's digits with Adam and PSGD Kron, compress it "
            "(uniform 8/4-bit, LSQ, DiffQ, distributional), print a table, save the best "
            "compressed model, reload it into a fresh model and plot accuracy against size."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument(
        "--out", default="demo_out", help="folder for the artefacts (default: demo_out)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demonstration; returns 0 when the reloaded model matches the in-memory one.

    >>> import argparse
    >>> run(argparse.Namespace(quick=True, out="/nonexistent/\\0bad", seed=0, no_progress=True))
    Traceback (most recent call last):
    ValueError: ...
    """
    from pathlib import Path

    from optiquant.demo import run_demo

    out = Path(args.out)
    if "\0" in str(out):
        raise ValueError(f"--out: not a valid folder name: {args.out!r}")
    result = run_demo(out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    (out / "demo_summary.json").write_text(json.dumps(result.to_dict(), indent=2))
    (out / "demo_table.md").write_text(result.table() + "\n")
    if result.reloaded_accuracy != result.in_memory_accuracy:
        print("optiquant: error: the reloaded model's accuracy differs from the in-memory one")
        return 1
    return 0
