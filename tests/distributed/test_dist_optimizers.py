"""Every class optimizer under FSDP2 and DDP (2 gloo processes) equals one process.

The shared launch trains the same MLP with each optimizer of the registry, once on
``fully_shard`` parameters and once under ``DistributedDataParallel``, each rank on half
of the global batch; here the same training runs on the whole batch in one process.

Tolerance: the 2-process gradient is the average of two half-batch means instead of
one mean, which differs in the last bits; parameters are O(1) and each of the 5 steps
adds a few ulps, hence ``step_tolerance(float64, 5)`` (about 7e-14).
"""

from __future__ import annotations

import pytest
import torch
from dist_launch import load
from dist_models import OPTIMIZERS, STEPS, batch, mlp, train

from optiquant.testing import step_tolerance


@pytest.fixture(scope="module")
def trained(dist_run) -> list[dict[str, torch.Tensor]]:
    root = dist_run.part("optimizers")
    return [load(root / f"optimizers{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("kind", ["fsdp", "ddp"])
def test_matches_single_process(
    trained: list[dict[str, torch.Tensor]], name: str, kind: str
) -> None:
    model = mlp()
    x, y = batch()
    train(model, OPTIMIZERS[name](model.parameters()), x, y)
    start = dict(mlp().named_parameters())
    tol = step_tolerance(torch.float64, STEPS)
    for key, p in model.named_parameters():
        got = trained[0][f"{kind}|{name}|{key}"]
        assert got.dtype == torch.float64 and got.shape == p.shape
        torch.testing.assert_close(got, p.detach(), rtol=0, atol=tol, msg=key)
        assert not torch.equal(got, start[key].detach()), f"{key} did not move"


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_ddp_ranks_bit_identical(trained: list[dict[str, torch.Tensor]], name: str) -> None:
    keys = [k for k in trained[0] if k.startswith(f"ddp|{name}|")]
    assert keys
    for key in keys:
        assert torch.equal(trained[0][key], trained[1][key]), key
