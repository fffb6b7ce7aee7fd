"""Task-parallel MAML over RPC (2 processes) gives the one-process meta-gradient.

Float64; the two workers each average the query losses of 2 of the 4 tasks and the
two means are averaged, which equals the mean over the 4 tasks up to rounding, so the
meta-gradients agree to 1e-10 (relative to their size, which is O(1)).
"""

from __future__ import annotations

import sys

import pytest
import torch
from dist_bodies import EXAMPLES
from dist_launch import load


@pytest.fixture(scope="module")
def result(dist_run) -> dict:
    return load(dist_run.part("rpc") / "rpc.pt")


def _maml():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import distributed_maml
    finally:
        sys.path.remove(str(EXAMPLES))
    return distributed_maml


def test_rpc_maml_meta_gradient_equals_single_process(result: dict) -> None:
    maml = _maml()
    params = maml.init_params()
    loss, grads = maml.meta_gradient_local(params, maml.make_tasks(4, seed=7))
    torch.testing.assert_close(result["loss"], loss, rtol=1e-10, atol=0)
    assert len(result["grads"]) == len(grads) == 4
    for got, want in zip(result["grads"], grads):
        assert got.dtype == torch.float64
        assert float(want.abs().max()) > 1e-3  # a real gradient
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_exclusive_partitioner_and_sum_reducer_over_rpc(result: dict) -> None:
    x = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(result["square_sum"], (x**2).sum())


def test_worker_ids(result: dict) -> None:
    assert int(result["worker_id"]) == 0
    assert int(result["other_id"]) == 1
