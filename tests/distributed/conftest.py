"""One 2-process gloo launch runs every distributed part; tests read its results.

Starting processes costs far more than the tiny trainings, so the parts share one
launch (``dist_bodies.all_parts``). ``dist_run.part(name)`` returns the run directory,
or fails the test with the workers' traceback when that part failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from dist_bodies import PARTS, all_parts, prepare_kron
from dist_launch import run_workers


class DistRun:
    """The results of the shared launch."""

    def __init__(self, root: Path, error: BaseException | None) -> None:
        self.root = root
        self.error = error

    def part(self, name: str) -> Path:
        """The run directory, once part ``name`` succeeded on both ranks."""
        assert name in PARTS
        failures = sorted(self.root.glob(f"{name}.rank*.failed"))
        if failures:
            pytest.fail("\n".join(f.read_text() for f in failures), pytrace=False)
        if self.error is not None:
            pytest.fail(f"the 2-process launch failed: {self.error!r}", pytrace=False)
        for rank in range(2):
            if not (self.root / f"{name}.rank{rank}.done").exists():
                pytest.fail(f"part {name!r} did not finish on rank {rank}", pytrace=False)
        return self.root


@pytest.fixture(scope="session")
def dist_run(tmp_path_factory: pytest.TempPathFactory) -> DistRun:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    root = tmp_path_factory.mktemp("dist")
    prepare_kron(root)
    error: BaseException | None = None
    try:
        run_workers(all_parts, root, timeout=150)
    except Exception as exc:  # reported by each test that needs the results
        error = exc
    return DistRun(root, error)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
