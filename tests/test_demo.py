"""``optiquant demo --quick`` end to end: every row, a safe file that reloads, a valid PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optiquant.cli import main

METHODS = [
    "float32",
    "uniform 8-bit (post-training)",
    "uniform 4-bit (QAT)",
    "LSQ 4-bit",
    "DiffQ (penalty 5)",
    "DiffQ (penalty 50)",
    "distributional 4-bit (Lloyd-Max)",
]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    return out


def test_table_has_every_row(demo_dir: Path) -> None:
    summary = json.loads((demo_dir / "demo_summary.json").read_text())
    rows = {(r["optimizer"], r["method"]) for r in summary["rows"]}
    assert rows == {(opt, m) for opt in ("Adam", "PSGD Kron") for m in METHODS}
    table = (demo_dir / "demo_table.md").read_text()
    assert table.count("\n") == 2 + 2 * len(METHODS)
    for row in summary["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["size_kb"] > 0
        if row["method"] == "float32":
            assert row["accuracy"] > 0.8, row  # the models really learned the digits
        else:
            assert row["ratio"] > 1.5, row  # every method really compressed
    sizes = {r["method"]: r["size_kb"] for r in summary["rows"] if r["optimizer"] == "Adam"}
    assert sizes["DiffQ (penalty 50)"] < sizes["DiffQ (penalty 5)"], "a larger penalty must shrink"


def test_saved_file_reloads_without_pickle_and_keeps_accuracy(demo_dir: Path) -> None:
    from safetensors import safe_open

    import optiquant.demo as demo
    from optiquant.io import load_quantized

    summary = json.loads((demo_dir / "demo_summary.json").read_text())
    path = Path(summary["saved_path"])
    with safe_open(str(path), framework="pt") as handle:  # a safetensors file: no pickle inside
        assert handle.keys()
    assert b"\x80\x04\x95" not in path.read_bytes()[:64]  # no pickle protocol header
    model = load_quantized(demo.SmallCNN(), path)
    accuracy = demo._accuracy(model, demo.load_digits_split(0))
    assert accuracy == summary["in_memory_accuracy"] == summary["reloaded_accuracy"]


def test_plot_is_a_valid_png(demo_dir: Path) -> None:
    import matplotlib.image

    path = demo_dir / "demo.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
