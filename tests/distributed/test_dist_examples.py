"""The distributed examples also run (and learn) in one process, as their docs say.

Their 2-process paths are what the shared launch checks: the FSDP2 + DistributedKron
and DDP + DiffQ parts, and the RPC MAML meta-gradient (from the example itself).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def test_fsdp_kron_example_learns() -> None:
    losses = _load("distributed_fsdp_kron").train(steps=40)
    assert sum(losses[-5:]) / 5 < 0.75 * losses[0]


def test_ddp_diffq_example_learns_and_shrinks() -> None:
    example = _load("distributed_ddp_diffq")
    quantizer, loss, size = example.train(steps=60)
    float_mb = sum(p.numel() * 4 for p in example.make_model().parameters()) / 2**20
    assert size < 0.5 * float_mb
    assert loss < 0.2  # the targets' variance is about 1
    quantizer.detach()


def test_maml_example_learns_in_one_process() -> None:
    before, after = _load("distributed_maml").train(meta_steps=20)
    assert after < 0.85 * before
