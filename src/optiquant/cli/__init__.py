"""The ``optiquant`` command line (also ``python -m optiquant``).

Subcommands live in their own modules, each with ``register(subparsers)`` that
adds its parser and sets ``func`` (``args -> int``). Adding a subcommand is
adding a module and a line to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from optiquant import __version__
from optiquant.cli import compress, decompress, demo, inspect

__all__ = ["COMMANDS", "build_parser", "main"]

#: Modules whose ``register(subparsers)`` adds one subcommand each.
COMMANDS = [demo, compress, inspect, decompress]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand.

    >>> build_parser().parse_args(["inspect", "model.oq"]).command
    'inspect'
    """
    parser = argparse.ArgumentParser(
        prog="optiquant",
        description=(
            "optiquant: train models to be good and small. Run the end-to-end demo, or "
            "compress checkpoints with optimal codebooks, inspect and restore them."
        ),
    )
    parser.add_argument("--version", action="version", version=f"optiquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success, 2 on bad input).

    >>> main(["compress", "/no/such/file.safetensors", "-o", "/tmp/x.oq"])
    2
    """
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, OSError) as exc:
        print(f"optiquant: error: {exc}", file=sys.stderr)
        return 2
