"""The torch.optim front ends: parity with the aliases, state_dict round trips, DDP."""

from __future__ import annotations

import io
import os

import pytest
import torch

import optiquant as oq
from optiquant.psgd import LRA, Affine, Kron, XMat, affine, kron, low_rank_approximation, xmat


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))


def _batches(n: int):
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(12, 5, generator=gen), torch.randn(12, 2, generator=gen)) for _ in range(n)
    ]


def _train_class(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


CASES = [
    (
        Kron,
        dict(lr=0.05, preconditioner_update_probability=0.4),
        kron,
        dict(learning_rate=0.05, preconditioner_update_probability=0.4),
    ),
    (
        XMat,
        dict(lr=0.05, preconditioner_update_probability=0.6),
        xmat,
        dict(learning_rate=0.05, preconditioner_update_probability=0.6),
    ),
    (
        LRA,
        dict(lr=0.05, rank=3),
        low_rank_approximation,
        dict(learning_rate=0.05, uvd_rank_of_approximation=3),
    ),
    (Affine, dict(lr=0.05, weight_decay=0.01), affine, dict(learning_rate=0.05, weight_decay=0.01)),
]


@pytest.mark.parametrize(
    ("cls", "ckw", "fn", "fkw"), CASES, ids=lambda c: getattr(c, "__name__", "")
)
def test_class_matches_functional(cls, ckw, fn, fkw) -> None:
    batches = _batches(5)
    model = _model()
    _train_class(model, cls(model.parameters(), **ckw), batches)

    ref = _model()
    params = [p.detach().clone() for p in ref.parameters()]
    tx = fn(**fkw)
    state = tx.init(params)
    for x, y in batches:

        def loss_fn(ps, x=x, y=y):
            return torch.nn.functional.mse_loss(
                torch.func.functional_call(ref, dict(zip(dict(ref.named_parameters()), ps)), (x,)),
                y,
            )

        grads = torch.func.grad(loss_fn)(params)
        updates, state = tx.update(list(grads), state, params)
        params = oq.apply_updates(params, updates)
    for a, b in zip(model.parameters(), params):
        torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("cls", "ckw", "fn", "fkw"), CASES, ids=lambda c: getattr(c, "__name__", "")
)
def test_state_dict_round_trip(cls, ckw, fn, fkw) -> None:
    """Save after 4 steps, load into a fresh optimizer, continue: identical to not stopping.
    The refit clock (rate 0.4/0.6 makes it matter) and the probe seed come back too."""
    batches = _batches(9)
    straight = _model()
    _train_class(straight, cls(straight.parameters(), **ckw), batches)

    first = _model()
    opt = cls(first.parameters(), **ckw)
    _train_class(first, opt, batches[:4])
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model(seed=123)
    resumed.load_state_dict(saved["model"])
    opt2 = cls(resumed.parameters(), **ckw)
    opt2.load_state_dict(saved["opt"])
    _train_class(resumed, opt2, batches[4:])
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_kron_class_scanned_group_and_lr_scheduler() -> None:
    stack = torch.nn.Parameter(torch.randn(3, 4, 5))
    opt = Kron([{"params": [stack], "scanned_layers": True}], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(2):
        opt.zero_grad()
        stack.pow(2).sum().backward()
        opt.step()
        sched.step()
    qs = [v for k, v in opt.state[stack].items() if ".Qs." in k]
    assert sorted(tuple(q.shape) for q in qs) == [(3, 4, 4), (3, 5, 5)]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)


def test_class_bad_arguments() -> None:
    with pytest.raises(ValueError, match="memory_save_mode"):
        Kron(_model().parameters(), memory_save_mode="half")
    with pytest.raises(ValueError, match="uvd_rank_of_approximation"):
        LRA(_model().parameters(), rank=0)
    with pytest.raises(ValueError, match="step_normalizer_order"):
        XMat(_model().parameters(), step_normalizer_order="3rd")


def test_ddp_two_processes_identical_params(tmp_path) -> None:
    """Kron under DistributedDataParallel (gloo, 2 CPU processes): both ranks end with
    bit-identical parameters; a rank-dependent seed (negative control) makes them differ."""
    import psgd_ddp_worker
    import torch.multiprocessing as mp

    init_file = os.path.join(tmp_path, "init")
    mp.spawn(psgd_ddp_worker.run, args=(2, init_file, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for a, b, init in zip(r0["shared"], r1["shared"], r0["init"]):
        assert torch.equal(a, b)
        assert not torch.equal(a, init)
    assert any(not torch.equal(a, b) for a, b in zip(r0["local"], r1["local"]))


def test_default_kron_state_dict_loads_with_weights_only() -> None:
    model = _model()
    opt = Kron(model.parameters())
    _train_class(model, opt, _batches(2))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    opt2 = Kron(model.parameters())
    opt2.load_state_dict(loaded)
    assert int(opt2.state_dict()["state"][0]["group/0.count"]) == 2
