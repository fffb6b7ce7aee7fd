"""Class front ends, state round trips, argument checks and the smaller transformations."""

from __future__ import annotations

import io

import pytest
import torch

import optiquant as oq
from optiquant.optim import schedule as sch
from optiquant.testing import mlp_loss, mlp_params

CLASSES = [
    (oq.Adam, dict(lr=1e-2)),
    (oq.AdamW, dict(lr=1e-2, amsgrad=True)),
    (oq.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1)),
    (oq.RMSProp, dict(lr=1e-2, centered=True, momentum=0.5)),
    (oq.NAdam, dict(lr=1e-2)),
    (oq.RAdam, dict(lr=1e-2)),
    (oq.Adagrad, dict(lr=1e-1, lr_decay=0.1)),
    (oq.Adamax, dict(lr=1e-2)),
    (oq.Lion, dict(lr=1e-3)),
]


def _train(opt, params, steps, start=0):
    for step in range(start, start + steps):
        opt.zero_grad()
        mlp_loss(params, step).backward()
        opt.step()


@pytest.mark.parametrize("cls,kwargs", CLASSES, ids=[c.__name__ for c, _ in CLASSES])
def test_state_dict_round_trip_continues_bit_identically(cls, kwargs) -> None:
    params = {k: torch.nn.Parameter(v) for k, v in mlp_params(dtype=torch.float32).items()}
    opt = cls(list(params.values()), **kwargs)
    _train(opt, params, 4)
    buffer = io.BytesIO()
    torch.save(
        {"params": {k: v.detach() for k, v in params.items()}, "opt": opt.state_dict()}, buffer
    )
    _train(opt, params, 4, start=4)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    params2 = {k: torch.nn.Parameter(v.clone()) for k, v in saved["params"].items()}
    opt2 = cls(list(params2.values()), **kwargs)
    opt2.load_state_dict(saved["opt"])
    _train(opt2, params2, 4, start=4)
    for k in params:
        assert torch.equal(params[k].detach(), params2[k].detach()), k


def test_functional_state_round_trip_is_bit_identical() -> None:
    params = mlp_params(dtype=torch.float32)
    tx = oq.chain(oq.clip_grad_norm(1.0), oq.adam(1e-2))

    def run(params, state, steps, start):
        for step in range(start, start + steps):
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            grads = dict(
                zip(leaves, torch.autograd.grad(mlp_loss(leaves, step), list(leaves.values())))
            )
            updates, state = tx.update(grads, state, params)
            params = oq.apply_updates(params, updates)
        return params, state

    params, state = run(params, tx.init(params), 3, 0)
    buffer = io.BytesIO()
    torch.save((params, state), buffer)
    a, _ = run(params, state, 3, 3)
    buffer.seek(0)
    p2, s2 = torch.load(buffer, weights_only=False)
    b, _ = run(p2, s2, 3, 3)
    for k in a:
        assert torch.equal(a[k], b[k])


def test_lr_scheduler_drives_the_class() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = oq.SGD([w], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        w.grad = torch.tensor([1.0], dtype=torch.float64)
        opt.step()
        sched.step()
    assert torch.allclose(w.detach(), torch.tensor([1.0 - 1.0 - 0.5 - 0.25], dtype=torch.float64))


def test_param_groups_and_none_grads() -> None:
    a = torch.nn.Parameter(torch.ones(2))
    b = torch.nn.Parameter(torch.ones(2))
    frozen = torch.nn.Parameter(torch.ones(2))
    opt = oq.Adam([{"params": [a]}, {"params": [b, frozen], "lr": 0.5}], lr=0.1)
    a.grad = torch.ones(2)
    b.grad = torch.ones(2)
    grad_before = b.grad.clone()
    opt.step()
    assert torch.allclose(a.detach(), torch.full((2,), 0.9))
    assert torch.allclose(b.detach(), torch.full((2,), 0.5))
    assert torch.equal(frozen.detach(), torch.ones(2))
    assert torch.equal(b.grad, grad_before), "step must not modify p.grad"
    assert float(opt.state[frozen]["1.count"]) == 0.0
    assert float(opt.state[b]["1.count"]) == 1.0


def test_generic_optimizer_over_any_chain() -> None:
    w = torch.nn.Parameter(torch.tensor([3.0, -4.0]))
    opt = oq.Optimizer([w], oq.chain(oq.clip_grad_norm(1.0), oq.sgd(lr=1.0)))
    w.grad = torch.tensor([3.0, -4.0])
    opt.step()
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 0.6, -4.0 + 0.8]), atol=1e-5)


def test_fused_update_equals_generic_update() -> None:
    for dtype in (torch.float32, torch.float64):
        for lr in (1e-3, 3e-4, 0.123):
            params = mlp_params(dtype=dtype)
            grads = {k: torch.randn_like(v) for k, v in params.items()}
            results = []
            for foreach in (None, False):
                tx = oq.adamw(lr, weight_decay=0.1, amsgrad=True, foreach=foreach)
                state = tx.init(params)
                u = None
                for _ in range(3):
                    u, state = tx.update({k: g.clone() for k, g in grads.items()}, state, params)
                results.append(u)
            for k in params:
                torch.testing.assert_close(
                    results[0][k],
                    results[1][k],
                    rtol=1e-6 if dtype == torch.float32 else 1e-12,
                    atol=0,
                )


def test_clip_grad_norm_matches_torch() -> None:
    grads = {k: torch.randn_like(v) * 3 for k, v in mlp_params().items()}
    ours, _ = oq.clip_grad_norm(0.5).update(
        {k: g.clone() for k, g in grads.items()}, oq.EmptyState()
    )
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads.values()]
    for p, g in zip(params, grads.values()):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, 0.5)
    for p, k in zip(params, grads):
        torch.testing.assert_close(ours[k], p.grad, rtol=1e-12, atol=1e-15)


def test_masked_applies_only_to_the_mask() -> None:
    params = mlp_params()
    tx = oq.masked(oq.adam(0.1), lambda p: {k: v.ndim == 2 for k, v in p.items()})
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    updates, _ = tx.update(grads, tx.init(params), params)
    assert torch.allclose(updates["w0"], torch.full_like(params["w0"], -0.1))
    assert torch.equal(updates["b0"], torch.ones_like(params["b0"]))


def test_apply_if_finite_skips_and_recovers() -> None:
    tx = oq.apply_if_finite(oq.sgd(1.0, momentum=0.5), max_consecutive_errors=2)
    p = torch.zeros(2)
    state = tx.init(p)
    u, state = tx.update(torch.tensor([1.0, float("inf")]), state, p)
    assert torch.equal(u, torch.zeros(2)) and int(state.notfinite_count) == 1
    u, state = tx.update(torch.tensor([1.0, 1.0]), state, p)
    assert torch.equal(u, torch.tensor([-1.0, -1.0])) and int(state.total_notfinite) == 1


def test_tensor_schedule_and_float_hyperparameters_agree() -> None:
    params = mlp_params()
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    s = sch.warmup_cosine_decay_schedule(0.0, 0.1, warmup_steps=2, decay_steps=6)
    a = oq.adam(lr=s)
    sa = a.init(params)
    for step in range(5):
        ua, sa = a.update({k: g.clone() for k, g in grads.items()}, sa, params)
        expected_lr = s(step)
        b = oq.adam(lr=torch.tensor(expected_lr, dtype=torch.float64))
        sb = b.init(params)
        for _ in range(step + 1):
            ub, sb = b.update({k: g.clone() for k, g in grads.items()}, sb, params, inplace=False)
        torch.testing.assert_close(ua["w0"], ub["w0"], rtol=1e-12, atol=1e-15)


def test_trace_first_step_flag_lives_in_the_state() -> None:
    tx = oq.trace(0.9, dampening=0.5)
    p = torch.zeros(1)
    first = [tx.update(torch.ones(1), tx.init(p))[0].item() for _ in range(2)]
    assert first == [1.0, 1.0]


@pytest.mark.parametrize(
    "factory,message",
    [
        (lambda: oq.adam(lr=-1.0), "lr"),
        (lambda: oq.adam(betas=(1.0, 0.9)), "betas[0]"),
        (lambda: oq.adam(betas=(0.9, -0.1)), "betas[1]"),
        (lambda: oq.adam(eps=0.0), "eps"),
        (lambda: oq.sgd(lr=0.1, momentum=-0.5), "momentum"),
        (lambda: oq.sgd(lr=0.1, nesterov=True), "nesterov"),
        (lambda: oq.rmsprop(alpha=1.5), "alpha"),
        (lambda: oq.adagrad(lr_decay=-1.0), "lr_decay"),
        (lambda: oq.adamw(weight_decay=-0.1), "weight_decay"),
        (lambda: oq.adam(lr=float("nan")), "lr"),
        (lambda: oq.Adam([torch.nn.Parameter(torch.ones(1))], lr=-0.1), "lr"),
    ],
)
def test_invalid_arguments_name_themselves(factory, message) -> None:
    with pytest.raises(
        (ValueError, TypeError), match=message.replace("[", r"\[").replace("]", r"\]")
    ):
        factory()


def test_mismatched_trees_and_non_tensor_leaves() -> None:
    tx = oq.adam()
    state = tx.init({"a": torch.ones(2)})
    with pytest.raises(ValueError, match="state"):
        tx.update({"a": torch.ones(2), "b": torch.ones(2)}, state)
    with pytest.raises(TypeError, match="params"):
        tx.init({"a": 1.0})
    with pytest.raises(TypeError, match="updates"):
        tx.update({"a": [1.0, 2.0]}, state)
    with pytest.raises(ValueError, match="same structure"):
        oq.apply_updates({"a": torch.ones(1)}, {"a": torch.ones(1), "b": torch.ones(1)})
    with pytest.raises(TypeError, match="GradientTransformation"):
        oq.chain(oq.adam(), "sgd")


def test_none_leaves_are_frozen() -> None:
    params = {"a": torch.ones(2), "b": None}
    tx = oq.adam(0.1)
    state = tx.init(params)
    updates, state = tx.update({"a": torch.ones(2), "b": None}, state, params)
    assert updates["b"] is None
    assert oq.apply_updates(params, updates)["b"] is None


def test_update_and_apply_rejects_bad_input() -> None:
    params = {"w": torch.ones(3)}
    with pytest.raises(TypeError, match="transformation must be a GradientTransformation"):
        oq.update_and_apply(lambda g: g, params, (), params)  # type: ignore[arg-type]
    tx = oq.adam(lr=0.1)
    state = tx.init(params)
    with pytest.raises(ValueError, match="same structure"):
        oq.update_and_apply(tx, {"w": torch.ones(3), "b": torch.ones(1)}, state, params)


def test_update_and_apply_is_differentiable_out_of_place() -> None:
    w0 = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    tx = oq.sgd(lr=0.1)
    params, _ = oq.update_and_apply(tx, [2 * w0], tx.init([w0]), [w0], inplace=False)
    # w1 = w0 - 0.1 * 2 w0 = 0.8 w0
    (grad,) = torch.autograd.grad(params[0].sum(), w0)
    assert float(grad) == pytest.approx(0.8, abs=1e-15)
    assert float(w0.detach()) == 2.0
