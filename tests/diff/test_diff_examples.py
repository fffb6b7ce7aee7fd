"""The differentiable-optimization examples run (shortened) and report sane numbers."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"diff_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _keep_global_state() -> Iterator[None]:
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "name, argv",
    [
        ("maml_sinusoid", ["--outer-steps", "3", "--tasks-per-step", "2"]),
        ("imaml_sinusoid", ["--outer-steps", "2", "--tasks-per-step", "2"]),
        ("lr_meta_learning", ["--outer-steps", "3"]),
    ],
)
def test_meta_learning_examples_run(
    name: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    result = _load(name).main(argv)
    assert result and all(math.isfinite(v) for v in result.values())
    assert "after" in capsys.readouterr().out


def test_ridge_example_learns_the_grid_optimum() -> None:
    result = _load("ridge_implicit").main(["--steps", "100"])
    assert result["final"] < result["start"]
    assert result["final"] <= result["grid_best"] * (1 + 1e-3)  # as good as a 121-point grid


def test_es_example_reduces_the_zero_one_error() -> None:
    result = _load("es_nondifferentiable").main(["--steps", "40"])
    assert result["final"] < 0.5 * result["start"]
