"""Plain-text tables and the per-tensor report shared by the subcommands."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["format_table", "summarize"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Align ``rows`` under ``headers`` (numbers right-aligned).

    >>> print(format_table(["a", "b"], [["x", 1.5]]))
    a     b
    -  ----
    x  1.50
    """

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "inf" if math.isinf(v) else f"{v:.2f}"
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in text)]) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(r[i], (int, float)) for r in rows) and rows for i in range(len(headers))
    ]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)
        ).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(r) for r in text)
    return "\n".join(out)


def summarize(
    report: Sequence[dict[str, Any]], original_bytes: int | None = None
) -> dict[str, Any]:
    """Totals of a per-tensor report (list of ``TensorReport.to_dict()``).

    ``quantized_*`` cover the quantized tensors only; ``mean_sqnr_db`` is the
    plain mean of their SQNR in dB.
    """
    q = [r for r in report if r["scheme"] != "float"]
    total_bytes = sum(int(r["nbytes"]) for r in report)
    q_numel = sum(int(r["numel"]) for r in q)
    q_bytes = sum(int(r["nbytes"]) for r in q)
    sq = [r["sqnr_db"] for r in q if r["sqnr_db"] is not None]
    out = {
        "tensors": len(report),
        "quantized_tensors": len(q),
        "params": sum(int(r["numel"]) for r in report),
        "quantized_params": q_numel,
        "stored_bytes": total_bytes,
        "quantized_bits_per_param": 8.0 * q_bytes / q_numel if q_numel else 0.0,
        "mean_sqnr_db": sum(sq) / len(sq) if sq else math.inf,
    }
    if original_bytes is not None:
        out["original_bytes"] = original_bytes
        out["ratio"] = original_bytes / total_bytes if total_bytes else math.inf
    return out
