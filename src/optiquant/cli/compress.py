"""``optiquant compress IN -o OUT``: quantize a checkpoint to a compressed file."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from optiquant.cli._files import load_checkpoint, report_of, with_report, write_compressed
from optiquant.cli._table import format_table, summarize
from optiquant.quant.distributional import METHODS
from optiquant.quant.ptq import DistConfig, allocate_bits, compress_state_dict

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``compress`` subcommand to ``sub`` (an argparse subparsers object).

    >>> import argparse
    >>> sub = argparse.ArgumentParser(prog="optiquant").add_subparsers(dest="command")
    >>> register(sub)
    >>> "compress" in sub.choices
    True
    """
    p = sub.add_parser(
        "compress",
        help="quantize a .safetensors or torch state-dict file",
        description=(
            "Quantize every floating tensor with two or more dimensions (above --min-size) "
            "and store the result, with a per-tensor size and SQNR report, in a safetensors "
            "file. Other tensors are kept as they are."
        ),
    )
    p.add_argument("input", type=Path, help="checkpoint: .safetensors, or a torch state dict")
    p.add_argument("-o", "--output", type=Path, required=True, help="compressed file to write")
    p.add_argument("--bits", type=int, default=4, help="bits per code, 1..16 (default 4)")
    p.add_argument(
        "--method",
        choices=METHODS,
        default="lloyd",
        help="codebook: lloyd (MSE-optimal, fitted), a distribution, or uniform (default lloyd)",
    )
    p.add_argument(
        "--group-size",
        type=int,
        default=64,
        help="values sharing one scale; 0 for one scale per tensor (default 64)",
    )
    p.add_argument("--scaling", choices=("absmax", "std"), default="absmax",
                   help="per-group normalisation for lloyd (default absmax)")  # fmt: skip
    p.add_argument("--outliers", type=float, default=0.0,
                   help="fraction of values per tensor stored exactly (default 0)")  # fmt: skip
    p.add_argument("--param-dtype", choices=("float16", "bfloat16", "float32", "log8"),
                   default="float16",
                   help="storage of group scales; log8: 8-bit log grid")  # fmt: skip
    p.add_argument("--budget", type=float, default=None, metavar="BITS",
                   help="mixed precision: choose bits per tensor (2..8) so the quantized "
                   "tensors take at most BITS bits per value, scales included")  # fmt: skip
    p.add_argument("--min-size", type=float, default=0.01,
                   help="tensors up to this many MB (of float32) stay as they are")  # fmt: skip
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="fnmatch pattern of names to keep as they are (repeatable)")  # fmt: skip
    p.add_argument("--float16", action="store_true", help="store unquantized tensors in float16")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--entropy",
        action="store_true",
        help="also report what rANS entropy coding of the codes would take, next to the "
        "fixed-rate size and the Gaussian rate-distortion bound",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``compress``; returns the exit status."""
    out: Path = args.output
    if out.exists() and not args.force:
        raise ValueError(f"{out} exists; pass --force to overwrite it")
    config = DistConfig(
        bits=args.bits,
        method=args.method,
        group_size=args.group_size,
        scaling=args.scaling,
        outliers=args.outliers,
        min_size=args.min_size,
        exclude=tuple(args.exclude),
        float16=args.float16,
        param_dtype=args.param_dtype,
    )
    state = load_checkpoint(args.input)
    original = sum(t.numel() * t.element_size() for t in state.values())
    progress = None
    if not args.quiet:
        from tqdm import tqdm

        def progress(items: Any) -> Any:
            return tqdm(items, desc="compress", unit="tensor", file=sys.stderr)

    overrides = None
    if args.budget is not None:
        overrides = allocate_bits(state, args.budget, config, progress=progress)
    encoded, reports = compress_state_dict(state, config, overrides=overrides, progress=progress)
    encoded = {r.name: with_report(encoded[r.name], r) for r in reports}
    report = [report_of(name, enc) for name, enc in encoded.items()]
    size = write_compressed(out, encoded, config=config.to_dict(), force=args.force)
    totals = summarize(report, original)
    totals["file_bytes"] = size
    if args.entropy:
        totals["entropy"] = entropy_totals(state, encoded)
    if args.json:
        print(json.dumps({"tensors": report, "totals": totals}, indent=1))
    elif not args.quiet:
        print(render(report, totals))
    return 0


def entropy_totals(originals: dict[str, Any], encoded: dict[str, Any]) -> dict[str, float]:
    """Bits per quantized value: fixed-rate codes, order-0 entropy, measured rANS, R(D) bound.

    Averages weighted by the number of values (codes only: scales and codebooks excluded).
    """
    from optiquant.quant.entropy import size_report

    acc = {"fixed": 0.0, "entropy": 0.0, "rans": 0.0, "rd_bound": 0.0}
    count = 0
    for name, enc in encoded.items():
        if enc.scheme != "distributional":
            continue
        codes = enc.unpack().tensors["codes"]
        x = originals[name].double()
        mse = float(enc.meta.get("report_mse") or 0.0)
        r = size_report(codes, enc.meta["n"], mse=mse, variance=float(x.var()) if x.numel() > 1
                        else 0.0, fixed_bits=enc.meta["bits"])  # fmt: skip
        for key in acc:
            acc[key] += r[key] * codes.numel() if math.isfinite(r[key]) else 0.0
        count += codes.numel()
    return {k: v / count for k, v in acc.items()} if count else acc


def render(report: list[dict[str, Any]], totals: dict[str, Any]) -> str:
    """Human-readable per-tensor table and totals."""
    rows = []
    for r in report:
        rows.append(
            [
                r["name"],
                "x".join(map(str, r["shape"])) or "scalar",
                r["method"],
                r["bits"],
                8.0 * r["nbytes"] / max(r["numel"], 1),
                r["nbytes"],
                float("inf") if r["sqnr_db"] is None else float(r["sqnr_db"]),
            ]
        )
    table = format_table(
        ["tensor", "shape", "method", "bits", "bits/value", "bytes", "SQNR dB"], rows
    )
    lines = [table, ""]
    lines.append(
        f"quantized {totals['quantized_tensors']}/{totals['tensors']} tensors, "
        f"{totals['quantized_params']:,}/{totals['params']:,} values at "
        f"{totals['quantized_bits_per_param']:.3f} bits/value (overheads included); "
        f"mean SQNR {totals['mean_sqnr_db']:.2f} dB"
    )
    if "original_bytes" in totals:
        lines.append(
            f"size {totals['original_bytes']:,} -> {totals['stored_bytes']:,} bytes of tensors "
            f"({totals['ratio']:.2f}x)"
            + (f"; file {totals['file_bytes']:,} bytes" if "file_bytes" in totals else "")
        )
    if "entropy" in totals:
        e = totals["entropy"]
        lines.append(
            f"codes, bits/value: fixed-rate {e['fixed']:.3f}, order-0 entropy {e['entropy']:.3f}, "
            f"rANS (measured) {e['rans']:.3f}, Gaussian R(D) bound {e['rd_bound']:.3f}"
        )
    return "\n".join(lines)
