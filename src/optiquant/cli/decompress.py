"""``optiquant decompress FILE -o OUT.safetensors``: decode a compressed file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from optiquant.cli._files import read_compressed, write_atomic

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``decompress`` subcommand.

    >>> import argparse
    >>> sub = argparse.ArgumentParser(prog="optiquant").add_subparsers(dest="command")
    >>> register(sub)
    >>> "decompress" in sub.choices
    True
    """
    p = sub.add_parser(
        "decompress",
        help="decode a compressed file back to a plain .safetensors state dict",
        description="Decode every tensor (original dtype and shape) into a safetensors file.",
    )
    p.add_argument("file", type=Path, help="file written by `optiquant compress`")
    p.add_argument("-o", "--output", type=Path, required=True, help="OUT.safetensors to write")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``decompress``."""
    from safetensors.torch import save
    from tqdm import tqdm

    out: Path = args.output
    if out.exists() and not args.force:
        raise ValueError(f"{out} exists; pass --force to overwrite it")
    encoded, _ = read_compressed(args.file)
    items = tqdm(encoded.items(), desc="decompress", unit="tensor", file=sys.stderr,
                 disable=args.quiet)  # fmt: skip
    tensors = {name: enc.decode().contiguous() for name, enc in items}
    write_atomic(out, save(tensors), args.force)
    if not args.quiet:
        print(f"wrote {len(tensors)} tensors to {out}")
    return 0
