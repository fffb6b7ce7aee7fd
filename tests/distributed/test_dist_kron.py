"""DistributedKron on 2 ranks: same result as one process, balanced owners, checkpoints
that change world size (2 -> 1 and 1 -> 2), and clear errors for bad set-ups.

Tolerance: as for the class optimizers (``step_tolerance(float64, steps)``): the only
difference from one process is the rounding of the averaged gradient.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dist_bodies import KRON_LR, RESUME_STEPS, single_kron
from dist_launch import load
from dist_models import KRON_OPTIONS, STEPS, batch, mlp, train

from optiquant.distributed import balanced_owners, kron_cost, load_checkpoint
from optiquant.testing import step_tolerance


@pytest.fixture(scope="module")
def root(dist_run) -> Path:
    return dist_run.part("kron")


def _single(steps: int = STEPS) -> tuple[torch.nn.Module, object]:
    model = mlp()
    opt = single_kron(model)
    train(model, opt, *batch(), steps=steps)
    return model, opt


def test_fsdp_matches_single_process(root: Path) -> None:
    model, _ = _single()
    tol = step_tolerance(torch.float64, STEPS)
    for rank in range(2):
        got = load(root / f"kron{rank}.pt")["params"]
        for key, p in model.named_parameters():
            torch.testing.assert_close(got[key], p.detach(), rtol=0, atol=tol, msg=key)


def test_work_is_divided(root: Path) -> None:
    owners = load(root / "kron0.pt")["owners"].tolist()
    assert owners == load(root / "kron1.pt")["owners"].tolist()
    shapes = [tuple(p.shape) for p in mlp().parameters()]
    assert owners == balanced_owners([kron_cost(s) for s in shapes], 2)
    assert set(owners) == {0, 1}
    # each rank stored state only for the parameters it owns
    for rank in range(2):
        state = load(root / f"kron_state_dict{rank}.pt")["state"]
        assert sorted(state) == [i for i, o in enumerate(owners) if o == rank]


def test_checkpoint_from_two_ranks_reloads_on_one(root: Path) -> None:
    model, opt = _single()
    model2 = mlp()
    model2.load_state_dict(dict(model.named_parameters()))
    opt2 = single_kron(model2)
    load_checkpoint(opt2, root / "kron_ck2")
    tol = step_tolerance(torch.float64, STEPS)
    for p, p2 in zip(model.parameters(), model2.parameters()):
        mine, theirs = opt.state[p], opt2.state[p2]
        assert sorted(mine) == sorted(theirs)
        for key in mine:
            assert mine[key].dtype == theirs[key].dtype
            torch.testing.assert_close(theirs[key], mine[key], rtol=0, atol=tol, msg=key)
    x, y = batch()
    train(model, opt, x, y, steps=RESUME_STEPS)
    train(model2, opt2, x, y, steps=RESUME_STEPS)
    tol = step_tolerance(torch.float64, STEPS + RESUME_STEPS)
    for p, p2 in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(p2.detach(), p.detach(), rtol=0, atol=tol)


def test_checkpoint_from_one_rank_reloads_on_two(root: Path) -> None:
    model, _ = _single(STEPS + RESUME_STEPS)
    tol = step_tolerance(torch.float64, STEPS + RESUME_STEPS)
    for rank in range(2):
        got = load(root / f"kron_resumed{rank}.pt")
        for key, p in model.named_parameters():
            torch.testing.assert_close(got[key], p.detach(), rtol=0, atol=tol, msg=key)


def test_per_rank_state_dict_refuses_another_world_size(root: Path) -> None:
    saved = load(root / "kron_state_dict0.pt")
    assert saved["distributed"]["world_size"] == 2
    _, opt = _single(1)
    with pytest.raises(ValueError, match=r"world size 2.*world size 1.*load_checkpoint"):
        opt.load_state_dict(saved)


def test_optimizer_created_before_sharding_is_caught(root: Path) -> None:
    for rank in range(2):
        messages = load(root / f"kron_errors{rank}.pt")
        assert "create the optimizer after fully_shard" in messages["check_optimizer"]
        assert (
            "fully_shard" in messages["step"]
            and "no parameter has a gradient" in (messages["step"])
        )


def test_options_match_kron_class_defaults() -> None:
    # the single-process reference above is DistributedKron itself; tie it to PSGD's Kron:
    # with one parameter it is PSGD's Kron with that parameter's probe seed.
    from optiquant.distributed import DistributedKron, param_seed
    from optiquant.psgd import Kron

    w = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    w2 = torch.nn.Parameter(w.detach().clone())
    a = DistributedKron([w], lr=KRON_LR, **KRON_OPTIONS)
    b = Kron([w2], lr=KRON_LR, seed=param_seed(0, 0), **KRON_OPTIONS)
    for step in range(4):
        target = torch.sin(torch.arange(15.0, dtype=torch.float64) + step).view(5, 3)
        for p, opt in ((w, a), (w2, b)):
            opt.zero_grad()
            ((p - target) ** 2).sum().backward()
            opt.step()
    assert torch.equal(w, w2)


def test_unsupported_setups_are_refused(root: Path) -> None:
    for rank in range(2):
        messages = load(root / f"kron_errors{rank}.pt")
        assert "2-D mesh" in messages["mesh2d"] and "1-D device mesh" in messages["mesh2d"]
        assert "same parameters in the same order" in messages["different_params"]
