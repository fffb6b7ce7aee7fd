"""Kron: closed-form fits, options, dtypes, scanned layers, differentiability, errors."""

from __future__ import annotations

import pytest
import torch
from psgd_helpers import matrix_power, rel_err, spd

import optiquant as oq
from optiquant.psgd import kron, kron_factor_kinds, kron_math, scale_by_kron


def dense_p(factors, kinds, geometry="eq") -> torch.Tensor:
    return kron_math.dense_preconditioner(
        tuple(f.unsqueeze(0) for f in factors), kinds, geometry=geometry
    )


def annealed(n_steps: int, start: float = 0.1, end: float = 0.002):
    half = n_steps // 2

    def lr(count: int) -> float:
        return start if count < half else start * (end / start) ** ((count - half) / half)

    return lr


# --------------------------------------------------------------------------- closed forms

M, N = 6, 5
C1, C2 = spd(M, 10.0, seed=1), spd(N, 10.0, seed=2)


@pytest.mark.parametrize("geometry", ["eq", "quad"])
def test_whitening_fit_approaches_inverse_sqrt_covariance(geometry: str) -> None:
    """Gradients ~ N(0, C1 ⊗ C2): the fitted P approaches C^(-1/2) (relative error < 6%).

    With a constant preconditioner step the fit fluctuates around the optimum; the step
    is annealed from 0.1 to 0.002 over the second half (3000 steps in all), which brings
    the relative Frobenius error to about 3-4%.
    """
    steps = 3000
    l1, l2 = torch.linalg.cholesky(C1), torch.linalg.cholesky(C2)
    target = torch.kron(matrix_power(C1, -0.5), matrix_power(C2, -0.5))
    tx = scale_by_kron(
        b1=0.0, preconditioner_update_probability=1.0, precond_lr=annealed(steps), geometry=geometry
    )
    w = torch.zeros(M, N, dtype=torch.float64)
    state = tx.init(w)
    kinds = (True, True)
    assert rel_err(dense_p(state.Qs, kinds, geometry), target) > 0.5
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        g = l1 @ torch.randn(M, N, generator=gen, dtype=torch.float64) @ l2.T
        _, state = tx.update(g, state)
    err = rel_err(dense_p(state.Qs, kinds, geometry), target)
    assert err < 0.06, err


def test_whitening_with_a_diagonal_factor() -> None:
    """``one_diag`` keeps the larger dimension diagonal; a diagonal C2 is still matched."""
    steps = 3000
    c2 = torch.diag(torch.linspace(0.2, 3.0, 7, dtype=torch.float64))
    c1 = spd(4, 5.0, seed=4)
    l1 = torch.linalg.cholesky(c1)
    target = torch.kron(matrix_power(c1, -0.5), matrix_power(c2, -0.5))
    tx = scale_by_kron(
        b1=0.0,
        preconditioner_update_probability=1.0,
        precond_lr=annealed(steps),
        memory_save_mode="one_diag",
    )
    state = tx.init(torch.zeros(4, 7, dtype=torch.float64))
    assert [f.shape for f in state.Qs] == [torch.Size([4, 4]), torch.Size([7])]
    gen = torch.Generator().manual_seed(5)
    for _ in range(steps):
        g = l1 @ torch.randn(4, 7, generator=gen, dtype=torch.float64) @ c2.sqrt()
        _, state = tx.update(g, state)
    assert rel_err(dense_p(state.Qs, (True, False)), target) < 0.06


@pytest.mark.parametrize("geometry", ["eq", "quad"])
def test_newton_fit_approaches_inverse_hessian(geometry: str) -> None:
    """Hvps of H = H1 ⊗ H2: the fitted P approaches H^-1 (relative error < 5%)."""
    steps = 2000
    h1, h2 = spd(M, 20.0, seed=6), spd(N, 20.0, seed=7)
    target = torch.kron(torch.linalg.inv(h1), torch.linalg.inv(h2))
    tx = scale_by_kron(b1=0.0, precond_lr=annealed(steps, 0.2), geometry=geometry)
    state = tx.init(torch.zeros(M, N, dtype=torch.float64))
    gen = torch.Generator().manual_seed(8)
    for _ in range(steps):
        v = torch.randn(M, N, generator=gen, dtype=torch.float64)
        _, state = tx.update(
            torch.zeros(M, N, dtype=torch.float64),
            state,
            Hvp=h1 @ v @ h2,
            vector=v,
            update_preconditioner=True,
        )
    assert rel_err(dense_p(state.Qs, (True, True), geometry), target) < 0.05


# --------------------------------------------------------------------------- factor kinds


@pytest.mark.parametrize(
    ("shape", "options", "kinds"),
    [
        ((8, 16), {}, (True, True)),
        ((8, 16), {"memory_save_mode": "one_diag"}, (True, False)),
        ((16, 16), {"memory_save_mode": "one_diag"}, (True, False)),
        ((16, 16), {"memory_save_mode": "smart_one_diag"}, (True, True)),
        ((8, 16, 4), {"memory_save_mode": "smart_one_diag"}, (True, False, True)),
        ((8, 16), {"memory_save_mode": "all_diag"}, (False, False)),
        ((8, 16), {"max_size_triangular": 10}, (True, False)),
        ((1, 16), {}, (False, True)),
        ((16,), {}, (False,)),
        ((16,), {"min_ndim_triangular": 1}, (True,)),
        ((4, 5, 6), {"min_ndim_triangular": 4}, (False, False, False)),
        ((), {}, (False,)),
    ],
)
def test_factor_kinds_in_state(shape, options, kinds) -> None:
    assert kron_factor_kinds(shape, **options) == kinds
    tx = scale_by_kron(**options)
    state = tx.init(torch.zeros(shape))
    core = shape if shape else (1,)
    expected = [torch.Size([d, d]) if full else torch.Size([d]) for d, full in zip(core, kinds)]
    assert [f.shape for f in state.Qs] == expected


def test_memory_save_mode_saves_memory() -> None:
    def numel(mode):
        state = scale_by_kron(memory_save_mode=mode).init([torch.zeros(64, 256), torch.zeros(256)])
        return sum(f.numel() for qs in state.Qs for f in qs)

    assert numel(None) == 64 * 64 + 256 * 256 + 256
    assert numel("one_diag") == 64 * 64 + 256 + 256
    assert numel("all_diag") == 64 + 256 + 256


# --------------------------------------------------------------------------- update details


def test_rms_clipping() -> None:
    """With P = I (no refit) the update is the gradient scaled down to RMS 1.1 when larger."""
    tx = scale_by_kron(b1=0.0, preconditioner_update_probability=0.0)
    g = torch.tensor([[30.0, -40.0], [0.0, 0.0]])
    state = tx.init(torch.zeros(2, 2))
    upd, state = tx.update(g.clone(), state)
    torch.testing.assert_close(upd, g / (25.0 / 1.1))
    small = torch.tensor([[0.1, 0.2], [0.3, -0.4]])
    torch.testing.assert_close(tx.update(small.clone(), state)[0], small)
    unclipped = scale_by_kron(b1=0.0, preconditioner_update_probability=0.0, clip_update_rms=None)
    torch.testing.assert_close(unclipped.update(g.clone(), unclipped.init(g))[0], g)


def test_momentum_is_bias_corrected_ema() -> None:
    tx = scale_by_kron(b1=0.5, preconditioner_update_probability=0.0, clip_update_rms=None)
    state = tx.init(torch.zeros(3))
    g1, g2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 0.0, 1.0])
    u1, state = tx.update(g1.clone(), state)
    u2, state = tx.update(g2.clone(), state)
    torch.testing.assert_close(u1, g1)
    torch.testing.assert_close(u2, (0.25 * g1 + 0.5 * g2) / 0.75)


def test_factors_are_balanced_after_a_fit() -> None:
    tx = scale_by_kron(b1=0.0, preconditioner_update_probability=1.0, precond_init_scale=7.0)
    state = tx.init(torch.zeros(5, 3, 4))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        _, state = tx.update(1e3 * torch.randn(5, 3, 4, generator=gen), state)
    maxima = torch.stack([f.abs().max() for f in state.Qs])
    torch.testing.assert_close(maxima, maxima.mean().expand(3), rtol=1e-5, atol=0)


def test_balance_keeps_p() -> None:
    gen = torch.Generator().manual_seed(1)
    fs = (torch.randn(1, 3, 3, generator=gen).triu() * 100, torch.rand(1, 4, generator=gen) / 50)
    kinds = (True, False)
    torch.testing.assert_close(
        kron_math.dense_preconditioner(kron_math.balance_factors(fs), kinds),
        kron_math.dense_preconditioner(fs, kinds),
    )


def test_weight_decay_mask_and_learning_rate() -> None:
    params = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([1.0, -1.0])}
    grads = {"w": torch.full((2, 2), 0.5), "b": torch.full((2,), 0.5)}
    tx = kron(
        learning_rate=0.1,
        b1=0.0,
        weight_decay=0.2,
        weight_decay_mask={"w": True, "b": False},
        preconditioner_update_probability=0.0,
    )
    upd, _ = tx.update({k: v.clone() for k, v in grads.items()}, tx.init(params), params)
    torch.testing.assert_close(upd["w"], -0.1 * (grads["w"] + 0.2 * params["w"]))
    torch.testing.assert_close(upd["b"], -0.1 * grads["b"])


def test_learning_rate_schedule() -> None:
    tx = kron(learning_rate=lambda n: 0.1 / (n + 1), b1=0.0, preconditioner_update_probability=0.0)
    w = torch.zeros(2)
    state = tx.init(w)
    u1, state = tx.update(torch.ones(2), state, w)
    u2, state = tx.update(torch.ones(2), state, w)
    torch.testing.assert_close(u1, torch.full((2,), -0.1))
    torch.testing.assert_close(u2, torch.full((2,), -0.05))


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_dtypes(param_dtype) -> None:
    tx = scale_by_kron()
    w = torch.zeros(4, 3, dtype=param_dtype)
    state = tx.init(w)
    assert state.mu.dtype == param_dtype
    assert state.Qs[0].dtype == torch.promote_types(param_dtype, torch.float32)
    upd, state = tx.update(torch.randn(4, 3).to(param_dtype), state)
    assert upd.dtype == param_dtype and torch.isfinite(upd).all()

    tx = scale_by_kron(mu_dtype=torch.bfloat16, precond_dtype=torch.bfloat16)
    state = tx.init(torch.zeros(4, 3))
    assert state.mu.dtype == torch.bfloat16 and all(f.dtype == torch.bfloat16 for f in state.Qs)
    upd, state = tx.update(torch.randn(4, 3), state)
    assert upd.dtype == torch.float32 and state.Qs[0].dtype == torch.bfloat16
    assert torch.isfinite(upd).all()


@pytest.mark.parametrize("geometry", ["eq", "quad"])
def test_bf16_factors_track_fp32_factors(geometry: str) -> None:
    """Factors stored in bfloat16 follow the float32 run within bf16 round-off (10%)."""
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(6, 5, generator=gen) for _ in range(30)]
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        tx = scale_by_kron(
            b1=0.0, preconditioner_update_probability=1.0, precond_dtype=dtype, geometry=geometry
        )
        state = tx.init(torch.zeros(6, 5))
        for g in grads:
            _, state = tx.update(g.clone(), state)
        results.append(dense_p(tuple(f.float() for f in state.Qs), (True, True), geometry))
    assert rel_err(results[1], results[0]) < 0.1


def test_none_gradients_pass_through() -> None:
    tx = scale_by_kron(preconditioner_update_probability=1.0)
    params = [torch.zeros(3, 2), torch.zeros(4)]
    state = tx.init(params)
    q_before = [f.clone() for f in state.Qs[1]]
    upd, state = tx.update([torch.ones(3, 2), None], state)
    assert upd[1] is None and upd[0].shape == (3, 2)
    assert all(torch.equal(a, b) for a, b in zip(q_before, state.Qs[1]))


def test_auto_init_scale_survives_zero_gradients() -> None:
    tx = scale_by_kron(b1=0.0, precond_init_scale=None, preconditioner_update_probability=1.0)
    params = [torch.zeros(3, 2), torch.zeros(5)]
    state = tx.init(params)
    upd, state = tx.update([torch.full((3, 2), 4.0), torch.zeros(5)], state)
    assert all(torch.isfinite(u).all() for u in upd)
    assert all(torch.isfinite(f).all() for qs in state.Qs for f in qs)
    torch.testing.assert_close(state.Qs[1][0], torch.ones(5), atol=0.2, rtol=0)  # fell back to 1
    assert bool(state.scale_set)


def test_no_global_rng_use_and_same_seed_same_result() -> None:
    """Probes come from the state's seed and the step count, never from torch's global RNG."""
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(4, 3, generator=gen) for _ in range(5)]

    def run(seed):
        tx = scale_by_kron(preconditioner_update_probability=1.0, seed=seed)
        state = tx.init(torch.zeros(4, 3))
        for g in grads:
            upd, state = tx.update(g.clone(), state)
        return upd

    rng = torch.random.get_rng_state()
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------------- scanned layers


def test_scanned_math_equals_per_slice() -> None:
    """Batched fits and preconditioning equal the same math run slice by slice."""
    gen = torch.Generator().manual_seed(4)
    kinds = (True, False, True)
    shape = (3, 4, 5)
    fs = kron_math.init_factors(shape, kinds, batch=3, dtype=torch.float64)
    h = torch.randn(3, *shape, generator=gen, dtype=torch.float64)
    v = torch.randn(3, *shape, generator=gen, dtype=torch.float64)
    for geometry in ("eq", "quad"):
        new = kron_math.update_factors(fs, kinds, v, h, lr=0.3, geometry=geometry)
        pre = kron_math.precondition(new, kinds, h, geometry=geometry)
        for i in range(3):
            one = kron_math.update_factors(
                tuple(f[i : i + 1] for f in fs),
                kinds,
                v[i : i + 1],
                h[i : i + 1],
                lr=0.3,
                geometry=geometry,
            )
            for a, b in zip(one, new):
                torch.testing.assert_close(a[0], b[i])
            torch.testing.assert_close(
                kron_math.precondition(one, kinds, h[i : i + 1], geometry=geometry)[0], pre[i]
            )


def test_scanned_transform_equals_separate_params() -> None:
    """A (3, 6, 5) stack marked as scanned behaves as three separate (6, 5) params."""
    gen = torch.Generator().manual_seed(5)
    stacked_tx = scale_by_kron(b1=0.9, scanned_layers=[True])
    separate_tx = scale_by_kron(b1=0.9)
    st_state = stacked_tx.init([torch.zeros(3, 6, 5)])
    sp_state = separate_tx.init([torch.zeros(6, 5) for _ in range(3)])
    assert [f.shape for f in st_state.Qs[0]] == [torch.Size([3, 6, 6]), torch.Size([3, 5, 5])]
    for _ in range(4):
        g = torch.randn(3, 6, 5, generator=gen)
        v = torch.randn(3, 6, 5, generator=gen)
        hv = 3.0 * v + 0.1 * v.flip(-1)
        u_st, st_state = stacked_tx.update(
            [g.clone()], st_state, Hvp=[hv], vector=[v], update_preconditioner=True
        )
        u_sp, sp_state = separate_tx.update(
            list(g.clone()), sp_state, Hvp=list(hv), vector=list(v), update_preconditioner=True
        )
        torch.testing.assert_close(u_st[0], torch.stack(u_sp))
    for i in range(3):
        for a, b in zip(st_state.Qs[0], sp_state.Qs[i]):
            torch.testing.assert_close(a[i], b)


def test_scanned_chunks_equal_whole_stack() -> None:
    gen = torch.Generator().manual_seed(6)
    grads = [torch.randn(5, 4, 3, generator=gen) for _ in range(3)]
    results = []
    for chunk in (None, 2):
        tx = scale_by_kron(
            scanned_layers=lambda p: [True],
            scanned_chunk_size=chunk,
            preconditioner_update_probability=1.0,
        )
        state = tx.init([torch.zeros(5, 4, 3)])
        for g in grads:
            upd, state = tx.update([g.clone()], state)
        results.append((upd[0], state.Qs[0]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- modes and errors


def test_inplace_false_mutates_nothing_and_is_differentiable() -> None:
    tx = scale_by_kron(b1=0.9, preconditioner_update_probability=1.0)
    w = torch.zeros(3, 2, dtype=torch.float64)
    state = tx.init(w)
    _, state = tx.update(torch.randn(3, 2, dtype=torch.float64), state)
    snapshot = [f.clone() for f in state.Qs] + [state.mu.clone()]
    g = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    upd, new_state = tx.update(g, state, inplace=False)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, [*state.Qs, state.mu]))
    (upd.sum() + sum(f.sum() for f in new_state.Qs)).backward()
    assert g.grad is not None and torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0


def test_inplace_false_matches_inplace() -> None:
    gen = torch.Generator().manual_seed(7)
    grads = [torch.randn(8, 300, generator=gen) for _ in range(3)]
    outs = []
    for inplace in (True, False):
        tx = scale_by_kron(preconditioner_update_probability=1.0)
        state = tx.init(torch.zeros(8, 300))
        for g in grads:
            upd, state = tx.update(g.clone(), state, inplace=inplace)
        outs.append(upd)
    torch.testing.assert_close(outs[0], outs[1])


def test_blocked_products_match_dense() -> None:
    """Large factors take the blocked triangular path; it must equal the dense one."""
    from optiquant.psgd import _linalg

    gen = torch.Generator().manual_seed(8)
    q = torch.randn(2, 600, 600, generator=gen, dtype=torch.float64).triu()
    x = torch.randn(2, 600, 7, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 600, 7, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(_linalg.triu_mm(q, x), q @ x)
    torch.testing.assert_close(_linalg.triu_t_mm(q, x), q.mT @ x)
    torch.testing.assert_close(_linalg.triu_triu_mm(q, q), q @ q)
    torch.testing.assert_close(_linalg.triu_gram_diff(x, y), torch.triu(x @ x.mT - y @ y.mT))
    m = x @ x.mT + y @ y.mT
    est = _linalg.gram_norm_estimate(x, y)
    true = torch.linalg.matrix_norm(m, ord=2)
    assert bool((est <= true * (1 + 1e-12)).all() and (est >= 0.5 * true).all())


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"b1": 1.0}, ValueError, "b1"),
        (
            {"preconditioner_update_probability": 1.5},
            ValueError,
            "preconditioner_update_probability",
        ),
        ({"memory_save_mode": "some_diag"}, ValueError, "memory_save_mode"),
        ({"geometry": "pro"}, ValueError, "geometry"),
        ({"precond_lr": 0.0}, ValueError, "precond_lr"),
        ({"precond_init_scale": -1.0}, ValueError, "precond_init_scale"),
        ({"max_size_triangular": 1.5}, TypeError, "max_size_triangular"),
        ({"mu_dtype": torch.int32}, TypeError, "mu_dtype"),
        ({"scanned_chunk_size": 0}, ValueError, "scanned_chunk_size"),
        ({"clip_update_rms": float("nan")}, ValueError, "clip_update_rms"),
        ({"momentum_into_precond_update": 1}, TypeError, "momentum_into_precond_update"),
    ],
)
def test_bad_options(kwargs, exc, name) -> None:
    with pytest.raises(exc, match=name):
        scale_by_kron(**kwargs)


def test_bad_inputs() -> None:
    tx = scale_by_kron()
    with pytest.raises(ValueError, match="empty"):
        tx.init(torch.zeros(0, 3))
    with pytest.raises(TypeError, match="floating-point"):
        tx.init(torch.zeros(3, dtype=torch.int64))
    state = tx.init(torch.zeros(3))
    with pytest.raises(ValueError, match="update_preconditioner"):
        tx.update(torch.ones(3), state, Hvp=torch.ones(3), vector=torch.ones(3))
    with pytest.raises(ValueError, match="Hvp and vector"):
        tx.update(torch.ones(3), state, update_preconditioner=True)
    with pytest.raises(ValueError, match="structure"):
        tx.update([torch.ones(3)], state)
    with pytest.raises(ValueError, match="scanned_layers"):
        scale_by_kron(scanned_layers=[True, False]).init([torch.zeros(3)])
    with pytest.raises(ValueError, match="stack"):
        scale_by_kron(scanned_layers=[True]).init([torch.zeros(())])


def test_kron_trains_a_small_regression() -> None:
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(64, 8, generator=gen)
    w_true = torch.randn(8, 3, generator=gen)
    y = x @ w_true
    params = {"w": torch.zeros(8, 3), "b": torch.zeros(3)}
    tx = kron(learning_rate=0.03)
    state = tx.init(params)
    for _ in range(300):
        p = {k: v.detach().requires_grad_() for k, v in params.items()}
        loss = ((x @ p["w"] + p["b"] - y) ** 2).mean()
        grads = torch.autograd.grad(loss, list(p.values()))
        upd, state = tx.update(dict(zip(p, grads)), state, params)
        params = oq.apply_updates(params, upd)
    final = float(((x @ params["w"] + params["b"] - y) ** 2).mean())
    assert final < 1e-3 * float((y**2).mean())


def test_differentiable_through_an_inner_step_with_func_optimizer() -> None:
    """Meta-gradient through one Kron step (FuncOptimizer, inplace=False) matches finite
    differences: d/ds of the loss after a step on s * data."""
    data = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.8, -1.0]], dtype=torch.float64)

    def outer(s: torch.Tensor) -> torch.Tensor:
        w = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
        opt = oq.FuncOptimizer(
            kron(
                learning_rate=0.1,
                b1=0.0,
                preconditioner_update_probability=1.0,
                clip_update_rms=None,
            )
        )
        w1 = opt.step(((w - s * data) ** 2).sum(), w)
        return ((w1 - data) ** 2).sum()

    s = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(outer(s), s)
    eps = 1e-6
    fd = (
        outer(torch.tensor(0.7 + eps, dtype=torch.float64))
        - outer(torch.tensor(0.7 - eps, dtype=torch.float64))
    ) / (2 * eps)
    torch.testing.assert_close(grad, fd.detach(), rtol=1e-5, atol=1e-8)


def test_quad_factors_stay_symmetric_positive_definite() -> None:
    """The congruence step M Q M keeps every full factor symmetric positive definite, even
    with a large preconditioner step and badly scaled gradients."""
    tx = scale_by_kron(
        b1=0.0, preconditioner_update_probability=1.0, geometry="quad", precond_lr=0.9
    )
    state = tx.init(torch.zeros(6, 4))
    gen = torch.Generator().manual_seed(10)
    scales = torch.logspace(-3, 3, 6).view(6, 1)
    for _ in range(40):
        _, state = tx.update(scales * torch.randn(6, 4, generator=gen), state)
    for q in state.Qs:
        torch.testing.assert_close(q, q.T, rtol=0, atol=1e-6 * float(q.abs().max()))
        assert float(torch.linalg.eigvalsh(q.double()).min()) > 0
