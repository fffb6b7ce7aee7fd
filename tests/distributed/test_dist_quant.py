"""DiffQ under DDP and FSDP2 on 2 ranks, and ``save_quantized`` from a sharded model.

DiffQ's training noise is drawn from the global RNG, seeded the same on every rank and
in the single process, so every rank (and the single process) uses the same noise.
Tolerance (float32): the averaged gradient rounds differently from the one-process
gradient; Adam turns that into at most a few ulps of the step size per step, hence
``step_tolerance(float32, steps, scale=lr)`` with the largest learning rate (0.1, the
bits' group).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dist_bodies import DIFFQ_PENALTY, diffq, quant_batch, quant_model, train_diffq
from dist_launch import load

from optiquant.io import save_quantized
from optiquant.testing import step_tolerance


@pytest.fixture(scope="module")
def root(dist_run) -> Path:
    return dist_run.part("quant")


def _single(penalty: float, steps: int, shard_like_fsdp: bool) -> torch.nn.Module:
    model = quant_model()
    quantizer, opt = diffq(model)
    if shard_like_fsdp:  # the FSDP2 run builds its optimizer after sharding: one group
        import optiquant as oq

        opt = oq.Adam(model.parameters(), lr=1e-2)
    train_diffq(model, quantizer, opt, *quant_batch(), penalty, steps)
    quantizer.detach()
    return model


def test_ddp_bits_identical_on_ranks_and_match_single_process(root: Path) -> None:
    ranks = [load(root / f"diffq_ddp{r}.pt") for r in range(2)]
    bit_keys = [k for k in ranks[0] if k.endswith("_diffq")]
    assert bit_keys, "the quantizer's bit logits are trained parameters"
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    model = _single(DIFFQ_PENALTY, 5, shard_like_fsdp=False)
    tol = step_tolerance(torch.float32, 5, scale=0.1)
    for key, p in model.named_parameters():
        torch.testing.assert_close(ranks[0][key], p.detach(), rtol=0, atol=tol, msg=key)
    fresh = quant_model()
    diffq(fresh)
    start = dict(fresh.named_parameters())
    for key in bit_keys:
        assert (ranks[0][key] - start[key]).abs().max() > 100 * tol, f"{key} did not train"


def test_fsdp_training_matches_single_process(root: Path) -> None:
    got = load(root / "diffq_fsdp0.pt")
    other = load(root / "diffq_fsdp1.pt")
    assert all(torch.equal(got[k], v) for k, v in other.items())
    model = _single(0.0, 3, shard_like_fsdp=True)
    tol = step_tolerance(torch.float32, 3, scale=1e-2)
    for key, p in model.named_parameters():
        torch.testing.assert_close(got[key], p.detach(), rtol=0, atol=tol, msg=key)


def test_save_quantized_from_fsdp_equals_single_process_file(root: Path, tmp_path: Path) -> None:
    from optiquant.quant import DiffQuantizer

    weights = load(root / "diffq_fsdp0.pt")
    model = quant_model()
    quantizer = DiffQuantizer(model, group_size=8, min_size=0)
    with torch.no_grad():
        for key, p in model.named_parameters():
            p.copy_(weights[key])
    path = save_quantized(quantizer, tmp_path / "single.safetensors")
    assert path.read_bytes() == (root / "diffq_fsdp.safetensors").read_bytes()


def test_quantizer_after_ddp_is_refused(root: Path) -> None:
    for rank in range(2):
        message = load(root / f"diffq_errors{rank}.pt")["quantizer_after_ddp"]
        assert "DistributedDataParallel" in message
