"""Single-process checks of optiquant.distributed: rank helpers, partitioners, reducers,
ownership, DistributedKron's exactness and state handling, checkpoints, error messages."""

from __future__ import annotations

import io
import itertools
import pickle
from pathlib import Path

import pytest
import torch
from dist_models import KRON_OPTIONS, batch, mlp, train
from hypothesis import given, settings
from hypothesis import strategies as st

import optiquant as oq
import optiquant.distributed as odist
from optiquant.distributed._shards import chunk_bounds
from optiquant.psgd import kron

# ---------------------------------------------------------------------------- world info


def test_world_info_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert odist.get_world_info() == odist.WorldInfo(0, 1, 0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    info = odist.get_world_info()
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (3, 4, 1, 2)
    assert (odist.get_rank(), odist.get_world_size()) == (3, 4)
    assert (odist.get_local_rank(), odist.get_local_world_size()) == (1, 2)
    assert info.worker_name == "worker3"


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE: expected an integer"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
        ({"RANK": "-1"}, "RANK: expected a value >= 0"),
        ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "1"}, "inconsistent"),
    ],
)
def test_bad_environment_is_named(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], match: str
) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        odist.get_world_info()


def test_rank_guards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    calls = []

    @odist.on_rank(1, 2)
    def on12() -> str:
        calls.append("on12")
        return "ran"

    @odist.rank_zero_only
    def zero() -> str:
        return "zero"

    @odist.rank_non_zero_only
    def non_zero() -> str:
        return "other"

    results = {}
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        results[rank] = (on12(), zero(), non_zero())
    assert results == {
        0: (None, "zero", None),
        1: ("ran", None, "other"),
        2: ("ran", None, "other"),
    }
    with pytest.raises(ValueError, match="at least one rank"):
        odist.on_rank()
    with pytest.raises(TypeError, match="non-negative ints"):
        odist.not_on_rank(-1)


def test_worker_names_sort_in_rank_order() -> None:
    names = [odist.worker_name(r, 12) for r in range(12)]
    assert names == sorted(names) and names[0] == "worker00"
    with pytest.raises(ValueError, match=r"\{rank\}"):
        odist.worker_name(0, 2, "trainer")


# --------------------------------------------------------------------------- partitioners


def test_batch_split_and_shared_arguments() -> None:
    part = odist.dim_partitioner(0, workers=["a", "b"], shared=(0, "scale"))
    params = torch.ones(7, 3)  # shared although it has a dimension 0
    x = torch.arange(10.0).reshape(5, 2)
    calls = part(params, x, [x, "label"], scale=torch.ones(4))
    assert [w for w, _, _ in calls] == ["a", "b"]
    (_, a0, k0), (_, a1, _) = calls
    assert a0[0] is params and a1[0] is params and k0["scale"].shape == (4,)
    assert torch.equal(torch.cat([a0[1], a1[1]]), x)
    assert a0[1].shape == (3, 2) and a1[1].shape == (2, 2)
    assert a0[2][1] == "label" and torch.equal(a0[2][0], a0[1])


def test_exclusive_split_deals_round_robin() -> None:
    x = torch.arange(12.0).reshape(3, 4)
    calls = odist.TensorDimensionPartitioner(1, exclusive=True, workers=[0, 1])(x)
    assert [w for w, _, _ in calls] == [0, 1, 0, 1]
    assert [a[0].tolist() for _, a, _ in calls] == [x[:, k].tolist() for k in range(4)]
    kept = odist.TensorDimensionPartitioner(1, exclusive=True, keepdim=True, workers=[0])(x)
    assert all(a[0].shape == (3, 1) for _, a, _ in kept)


def test_fewer_samples_than_workers() -> None:
    calls = odist.dim_partitioner(0, workers=[0, 1, 2])(torch.zeros(2, 5))
    assert [(w, a[0].shape[0]) for w, a, _ in calls] == [(0, 1), (1, 1)]


def test_partitioner_errors() -> None:
    part = odist.dim_partitioner(0, workers=[0, 1])
    with pytest.raises(ValueError, match="sizes 3 and 4"):
        part(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="no tensor argument"):
        part(1, "a")
    with pytest.raises(ValueError, match="empty"):
        part(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="dim"):
        odist.TensorDimensionPartitioner(-1)
    with pytest.raises(ValueError, match="at least one worker"):
        odist.TensorDimensionPartitioner(0, workers=[])


# ------------------------------------------------------------------------------- reducers


def test_reducers_on_trees() -> None:
    results = [
        {"loss": torch.tensor(1.0), "n": 2, "g": [torch.ones(2), None]},
        {"loss": torch.tensor(3.0), "n": 4, "g": [3 * torch.ones(2), None]},
    ]
    mean = odist.mean_reducer(results)
    total = odist.sum_reducer(results)
    assert float(mean["loss"]) == 2.0 and mean["n"] == 3.0 and mean["g"][1] is None
    assert torch.equal(mean["g"][0], 2 * torch.ones(2))
    assert float(total["loss"]) == 4.0 and total["n"] == 6.0
    assert torch.equal(total["g"][0], 4 * torch.ones(2))


def test_reducer_errors() -> None:
    with pytest.raises(ValueError, match="at least one result"):
        odist.mean_reducer([])
    with pytest.raises(ValueError, match="structure"):
        odist.sum_reducer([{"a": torch.ones(1)}, {"b": torch.ones(1)}])
    with pytest.raises(TypeError, match="all tensors"):
        odist.sum_reducer([torch.ones(1), 1.0])


def test_mean_of_equal_chunks_is_the_batch_mean() -> None:
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    calls = odist.dim_partitioner(0, workers=[0, 1])(x)
    parts = [a[0].pow(2).mean() for _, a, _ in calls]
    torch.testing.assert_close(odist.mean_reducer(parts), x.pow(2).mean(), rtol=1e-15, atol=0)


def test_parallelize_validates_and_keeps_the_local_function() -> None:
    with pytest.raises(TypeError, match="partitioner"):
        odist.parallelize(partitioner=3)(torch.sum)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reducer"):
        odist.parallelize_async(reducer="mean")(torch.sum)  # type: ignore[arg-type]

    def local(x: torch.Tensor) -> torch.Tensor:
        return x + 1

    with pytest.raises(ValueError, match="not defined at module level"):
        odist.parallelize()(local)
    wrapped = odist.parallelize()(odist.mean_reducer)
    assert wrapped.func is odist.mean_reducer and wrapped.__name__ == "mean_reducer"
    # it travels to the workers by name and resolves to the module-level object
    assert pickle.loads(pickle.dumps(wrapped)) is odist.mean_reducer


# -------------------------------------------------------------------- ownership and costs


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(1, 5))
def test_chunk_bounds_follow_torch_chunk(size: int, parts: int) -> None:
    pieces = torch.arange(size).chunk(parts) if size else ()
    bounds = chunk_bounds(size, parts)
    assert len(bounds) == parts
    non_empty = [(s, n) for s, n in bounds if n]
    assert [(int(p[0]), len(p)) for p in pieces] == non_empty
    assert sum(n for _, n in bounds) == size


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1000), max_size=7), st.integers(1, 3))
def test_balanced_owners_within_the_greedy_bound(costs: list[int], world: int) -> None:
    owners = odist.balanced_owners(costs, world)
    assert owners == odist.balanced_owners(costs, world)  # deterministic
    loads = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(world)]
    best = min(
        max(sum(c for c, o in zip(costs, assign) if o == r) for r in range(world))
        for assign in itertools.product(range(world), repeat=len(costs))
    )
    # longest-processing-time-first is within (4/3 - 1/(3m)) of the optimum
    assert max(loads) <= (4 / 3 - 1 / (3 * world)) * best + 1e-9


def test_twelve_equal_matrices_split_six_six() -> None:
    costs = [odist.kron_cost((1024, 1024))] * 12
    assert sorted(odist.balanced_owners(costs, 2)).count(0) == 6


def test_kron_cost_follows_factor_kinds() -> None:
    assert odist.kron_cost((64, 32)) > odist.kron_cost((64, 32), memory_save_mode="all_diag")
    assert odist.kron_cost((10,)) == 8 * 10
    with pytest.raises(ValueError, match="world_size"):
        odist.balanced_owners([1.0], 0)
    with pytest.raises(ValueError, match="costs"):
        odist.balanced_owners([float("nan")], 1)


# ---------------------------------------------------------------------- DistributedKron


def _per_param_alias(model: torch.nn.Module, seed: int = 0) -> list[oq.Optimizer]:
    return [
        oq.Optimizer(
            [p],
            kron(learning_rate=0.05, seed=odist.param_seed(seed, i), **KRON_OPTIONS),
        )
        for i, p in enumerate(model.parameters())
    ]


class _Many:
    def __init__(self, opts: list[oq.Optimizer]) -> None:
        self.opts = opts

    def zero_grad(self) -> None:
        for o in self.opts:
            o.zero_grad()

    def step(self) -> None:
        for o in self.opts:
            o.step()


def test_one_process_equals_kron_per_parameter_exactly() -> None:
    a, b = mlp(), mlp()
    train(a, odist.DistributedKron(a.parameters(), lr=0.05, **KRON_OPTIONS), *batch())
    train(b, _Many(_per_param_alias(b)), *batch())
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_param_groups_and_lr_schedulers() -> None:
    a, b = mlp(), mlp()
    groups = lambda m: [  # noqa: E731
        {"params": list(m[0].parameters()), "lr": 0.02},
        {"params": list(m[2].parameters())},
    ]
    opt_a = odist.DistributedKron(groups(a), lr=0.05, **KRON_OPTIONS)
    sched = torch.optim.lr_scheduler.StepLR(opt_a, step_size=1, gamma=0.5)
    x, y = batch()
    lrs = []
    for _ in range(3):
        train(a, opt_a, x, y, steps=1)
        lrs.append([g["lr"] for g in opt_a.param_groups])
        sched.step()
    assert lrs == [[0.02, 0.05], [0.01, 0.025], [0.005, 0.0125]]
    # the same trajectory by hand, one alias per parameter with the group's lr per step
    params = list(b.parameters())
    for step, (lr0, lr1) in enumerate(lrs):
        b.zero_grad()
        ((b(x) - y) ** 2).mean().backward()
        for i, p in enumerate(params):
            lr = lr0 if i < 2 else lr1
            tx = kron(learning_rate=lr, seed=odist.param_seed(0, i), **KRON_OPTIONS)
            if step == 0:
                p._state = tx.init(p)  # type: ignore[attr-defined]
            upd, p._state = tx.update(p.grad.clone(), p._state, p)  # type: ignore[attr-defined]
            with torch.no_grad():
                p.add_(upd)
    for p, q in zip(a.parameters(), params):
        assert torch.equal(p, q)


def test_state_dict_round_trip_continues_exactly() -> None:
    x, y = batch()
    a = mlp()
    opt = odist.DistributedKron(a.parameters(), lr=0.05, **KRON_OPTIONS)
    train(a, opt, x, y, steps=3)
    saved = opt.state_dict()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    b = mlp()
    b.load_state_dict(a.state_dict())
    opt_b = odist.DistributedKron(b.parameters(), lr=0.05, **KRON_OPTIONS)
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    train(a, opt, x, y, steps=2)
    train(b, opt_b, x, y, steps=2)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_state_dict_errors() -> None:
    a = mlp()
    opt = odist.DistributedKron(a.parameters(), lr=0.05, **KRON_OPTIONS)
    train(a, opt, *batch(), steps=1)
    good = opt.state_dict()
    with pytest.raises(ValueError, match="no 'distributed' entry"):
        opt.load_state_dict({k: v for k, v in good.items() if k != "distributed"})
    with pytest.raises(ValueError, match="world size 2"):
        opt.load_state_dict({**good, "distributed": {"world_size": 2, "owners": [0, 1, 0, 1]}})
    bad = {**good, "state": {0: {**good["state"][0], "Q.0": torch.eye(3)}}}
    with pytest.raises(ValueError, match=r"'Q.0' of params\[0\] has shape"):
        opt.load_state_dict(bad)
    other = odist.DistributedKron(mlp()[0].parameters(), lr=0.05)
    with pytest.raises(ValueError, match=r"owners|param groups"):
        other.load_state_dict(good)


def test_constructor_errors() -> None:
    w = torch.nn.Parameter(torch.ones(2, 2))
    with pytest.raises(ValueError, match="seed"):
        odist.DistributedKron([w], seed=-1)
    with pytest.raises(ValueError, match="lr"):
        odist.DistributedKron([w], lr=-1.0)
    with pytest.raises(ValueError, match="b1"):
        odist.DistributedKron([w], b1=1.5)
    with pytest.raises(ValueError, match="empty"):
        odist.DistributedKron([torch.nn.Parameter(torch.ones(0, 2))])
    with pytest.raises(TypeError, match="floating-point"):
        odist.DistributedKron([torch.ones(2, dtype=torch.int64)])
    opt = odist.DistributedKron([w])
    with pytest.raises(RuntimeError, match="after construction"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))]})
    assert (opt.rank, opt.world_size, opt.owners) == (0, 1, [0])


def test_step_without_gradients_is_a_no_op_in_one_process() -> None:
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = odist.DistributedKron([w])
    opt.step()
    assert torch.equal(w, torch.ones(2, 2)) and not opt.state


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_in_one_process(tmp_path: Path) -> None:
    x, y = batch()
    a = mlp()
    opt = odist.DistributedKron(a.parameters(), lr=0.05, **KRON_OPTIONS)
    train(a, opt, x, y, steps=2)
    odist.save_checkpoint(opt, tmp_path / "ck")
    b = mlp()
    b.load_state_dict(a.state_dict())
    opt_b = odist.DistributedKron(b.parameters(), lr=0.05, **KRON_OPTIONS)
    odist.load_checkpoint(opt_b, tmp_path / "ck")
    train(a, opt, x, y, steps=2)
    train(b, opt_b, x, y, steps=2)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    a = mlp()
    opt = odist.DistributedKron(a.parameters(), lr=0.05, **KRON_OPTIONS)
    train(a, opt, *batch(), steps=1)
    odist.save_checkpoint(opt, tmp_path / "ck")
    wider = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 5))
    with pytest.raises(ValueError, match="shape"):
        odist.load_checkpoint(odist.DistributedKron(wider.parameters()), tmp_path / "ck")
    fewer = odist.DistributedKron(torch.nn.Linear(6, 8).parameters())
    with pytest.raises(ValueError, match="parameter 2, but the optimizer has 2"):
        odist.load_checkpoint(fewer, tmp_path / "ck")
    no_momentum = odist.DistributedKron(mlp().parameters(), b1=0.0)
    with pytest.raises(ValueError, match="entries"):
        odist.load_checkpoint(no_momentum, tmp_path / "ck")


def test_checkpoint_input_errors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="DistributedKron"):
        odist.save_checkpoint(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1), tmp_path)
    opt = odist.DistributedKron([torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="no checkpoint here"):
        odist.load_checkpoint(opt, tmp_path / "missing")


class _Evil:
    def __reduce__(self):  # pragma: no cover - never called: the unpickler refuses it
        import os

        return (os.system, ("echo pwned",))


def test_checkpoint_metadata_never_runs_code(tmp_path: Path) -> None:
    opt = odist.DistributedKron([torch.nn.Parameter(torch.ones(2))])
    (tmp_path / ".metadata").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ValueError, match=r"posix\.system|os\.system|refusing"):
        odist.load_checkpoint(opt, tmp_path)
    (tmp_path / ".metadata").write_bytes(b"\x80\x04truncated")
    with pytest.raises(ValueError, match="unreadable checkpoint metadata"):
        odist.load_checkpoint(opt, tmp_path)
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"not": "metadata"}))
    with pytest.raises(ValueError, match="no checkpoint metadata"):
        odist.load_checkpoint(opt, tmp_path)


# ------------------------------------------------------------------ helpers for DDP/FSDP2


def test_gathered_is_the_transformation_itself_on_plain_tensors() -> None:
    a, b = mlp(), mlp()
    x, y = batch()
    train(a, oq.Optimizer(a.parameters(), odist.gathered(kron(learning_rate=0.05))), x, y)
    train(b, oq.Optimizer(b.parameters(), kron(learning_rate=0.05)), x, y)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(TypeError, match="GradientTransformation"):
        odist.gathered(lambda g: g)  # type: ignore[arg-type]


def test_check_optimizer() -> None:
    model = torch.nn.Linear(3, 2)
    odist.check_optimizer(model, oq.Adam(model.parameters()))
    stale = oq.Adam(model.parameters())
    model.weight = torch.nn.Parameter(model.weight.detach().clone())
    with pytest.raises(ValueError, match="1 of its parameters"):
        odist.check_optimizer(model, stale)
    with pytest.raises(TypeError, match="optimizer"):
        odist.check_optimizer(model, "adam")  # type: ignore[arg-type]


def test_save_quantized_in_one_process_equals_io(tmp_path: Path) -> None:
    from optiquant.io import save_quantized
    from optiquant.quant import DiffQuantizer

    model = torch.nn.Sequential(torch.nn.Linear(16, 16))
    quantizer = DiffQuantizer(model, group_size=8, min_size=0)
    mine = odist.save_quantized(quantizer, tmp_path / "a.safetensors")
    theirs = save_quantized(quantizer, tmp_path / "b.safetensors")
    assert mine is not None and mine.read_bytes() == theirs.read_bytes()
    with pytest.raises(ValueError, match="rank"):
        odist.save_quantized(quantizer, tmp_path / "c.safetensors", rank=1)
    with pytest.raises(TypeError, match="quantizer or a model"):
        odist.save_quantized({"w": torch.ones(1)}, tmp_path / "d.safetensors")


def test_autograd_helpers_validate_before_communicating() -> None:
    assert odist.autograd.is_available()
    with pytest.raises(ValueError, match="at least one tensor"):
        odist.autograd.backward(0, [])
    with pytest.raises(TypeError, match="entry 0 must be a tensor"):
        odist.autograd.grad(0, [1.0], [torch.ones(1)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="scalar"):
        odist.autograd.backward(0, [torch.ones(2)])
