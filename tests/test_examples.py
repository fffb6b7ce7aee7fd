"""The quick-start example runs and trains (its loss drops well below the data's variance)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_trains_both_ways() -> None:
    quickstart = _load("quickstart")
    _, y = quickstart.make_data()
    baseline = float(((y - y.mean()) ** 2).mean())
    assert quickstart.train_with_class(steps=150) < 0.2 * baseline
    assert quickstart.train_functionally(steps=150) < 0.2 * baseline
