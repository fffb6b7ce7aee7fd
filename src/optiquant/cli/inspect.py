"""``optiquant inspect FILE``: per-tensor method, bits, size and SQNR of a compressed file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from optiquant.cli._files import read_compressed, report_of
from optiquant.cli._table import summarize
from optiquant.cli.compress import render

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``inspect`` subcommand.

    >>> import argparse
    >>> sub = argparse.ArgumentParser(prog="optiquant").add_subparsers(dest="command")
    >>> register(sub)
    >>> "inspect" in sub.choices
    True
    """
    p = sub.add_parser(
        "inspect",
        help="show what a compressed file holds",
        description="Per-tensor method, bits, stored size and SQNR, and totals.",
    )
    p.add_argument("file", type=Path, help="file written by `optiquant compress`")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``inspect``."""
    encoded, config = read_compressed(args.file)
    report = [report_of(name, enc) for name, enc in encoded.items()]
    original = sum(enc.numel * _itemsize(enc.dtype) for enc in encoded.values())
    totals = summarize(report, original)
    totals["file_bytes"] = Path(args.file).stat().st_size
    if args.json:
        print(json.dumps({"config": config, "tensors": report, "totals": totals},
                         indent=1))  # fmt: skip
    else:
        print(render(report, totals))
    return 0


def _itemsize(dtype: Any) -> int:
    import torch

    return torch.empty(0, dtype=dtype).element_size()
