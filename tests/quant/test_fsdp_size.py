"""DiffQ's size penalty with FSDP2-sharded bit logits (DTensors), on a one-rank gloo group."""

from __future__ import annotations

import pytest
import torch

import optiquant.quant as oq

dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)
fsdp = pytest.importorskip("torch.distributed.fsdp")


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))


@pytest.fixture
def group(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_model_size_with_sharded_logits_matches_unsharded(group) -> None:
    reference = _model()
    q_ref = oq.DiffQuantizer(reference, group_size=8, min_size=0)
    sharded = _model()
    q = oq.DiffQuantizer(sharded, group_size=8, min_size=0)
    with torch.no_grad():
        for model in (reference, sharded):
            for m in model:
                if isinstance(m, torch.nn.Linear):
                    m.weight_diffq.copy_(torch.linspace(-3, 3, m.weight_diffq.numel()))
    for m in sharded:
        if isinstance(m, torch.nn.Linear):
            fsdp.fully_shard(m)
    fsdp.fully_shard(sharded)
    assert type(sharded[0].weight_diffq).__name__ == "DTensor"

    size = q.model_size()
    expected = q_ref.model_size()
    assert not hasattr(size, "placements")  # an ordinary tensor, addable to a loss
    torch.testing.assert_close(size, expected, rtol=1e-6, atol=0)
    size.backward()
    expected.backward()
    for i in (0, 2):
        grad = sharded[i].weight_diffq.grad.full_tensor()
        torch.testing.assert_close(grad, reference[i].weight_diffq.grad, rtol=1e-6, atol=0)
    assert q.true_model_size() == pytest.approx(q_ref.true_model_size(), rel=0)
    assert torch.equal(q.get_widths()["0.weight"], q_ref.get_widths()["0.weight"])
