"""One test per option not covered elsewhere: each would fail if the option were ignored."""

from __future__ import annotations

import pytest
import torch

from optiquant.psgd import (
    affine_math,
    scale_by_affine,
    scale_by_kron,
    scale_by_lra,
    scale_by_xmat,
    xmat_math,
)


def _grads(n: int, shape=(4, 3), seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(n)]


def test_momentum_into_precond_update() -> None:
    """False: the factors are fitted on the raw gradients, exactly as a run without momentum."""
    grads = _grads(4)

    def factors(**kw):
        tx = scale_by_kron(preconditioner_update_probability=1.0, **kw)
        state = tx.init(torch.zeros(4, 3))
        for g in grads:
            _, state = tx.update(g.clone(), state)
        return state.Qs

    raw = factors(b1=0.9, momentum_into_precond_update=False)
    reference = factors(b1=0.0)
    with_momentum = factors(b1=0.9, momentum_into_precond_update=True)
    for a, b in zip(raw, reference):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(with_momentum[0], reference[0])


def test_precond_lr_scales_the_first_step() -> None:
    """From Q = I, one fit moves Q by exactly precond_lr times a fixed direction."""
    deltas = []
    for lr in (0.05, 0.2):
        tx = scale_by_kron(b1=0.0, preconditioner_update_probability=1.0, precond_lr=lr)
        state = tx.init(torch.zeros(4, 3))
        _, state = tx.update(_grads(1)[0], state)
        deltas.append(state.Qs[0])
    # balancing rescales the factors, so compare P's deviation from its own diagonal scale
    d1 = deltas[0] - torch.diag(deltas[0].diagonal())
    d2 = deltas[1] - torch.diag(deltas[1].diagonal())
    ratio = (d2.abs().sum() / d1.abs().sum()).item()
    assert 3.5 < ratio < 4.5  # 0.2 / 0.05 = 4, up to the balancing gain


def test_precond_init_scale_sets_initial_p() -> None:
    g = torch.tensor([[0.1, -0.2], [0.3, 0.05]])
    tx = scale_by_kron(
        b1=0.0, preconditioner_update_probability=0.0, precond_init_scale=3.0, clip_update_rms=None
    )
    upd, _ = tx.update(g.clone(), tx.init(g))
    torch.testing.assert_close(upd, 9.0 * g)


@pytest.mark.parametrize("factory", [scale_by_xmat, scale_by_lra, scale_by_affine])
def test_nesterov(factory) -> None:
    """With P = I (no refit, unit scale, U V^T aside) the update is the Nesterov EMA."""
    kw = dict(b1=0.5, preconditioner_update_probability=0.0, precond_init_scale=1.0, nesterov=True)
    if factory is scale_by_lra:
        kw["uvd_rank_of_approximation"] = 1
    tx = factory(**kw)
    w = torch.zeros(3)
    state = tx.init(w)
    if factory is scale_by_lra:
        state = state._replace(U=torch.zeros_like(state.U))
    g1, g2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 0.0, 1.0])
    u1, state = tx.update(g1.clone(), state)
    u2, state = tx.update(g2.clone(), state)
    m1, m2 = 0.5 * g1, 0.25 * g1 + 0.5 * g2
    torch.testing.assert_close(u1, 0.5 * m1 / (1 - 0.25) + 0.5 * g1 / 0.5)
    torch.testing.assert_close(u2, 0.5 * m2 / (1 - 0.125) + 0.5 * g2 / 0.75)


@pytest.mark.parametrize("factory", [scale_by_xmat, scale_by_lra, scale_by_affine])
def test_update_global_norm_clip(factory) -> None:
    tx = factory(
        b1=0.0,
        preconditioner_update_probability=0.0,
        precond_init_scale=1.0,
        update_global_norm_clip=2.0,
    )
    params = [torch.zeros(3), torch.zeros(2, 2)]
    state = tx.init(params)
    if factory is scale_by_lra:
        state = state._replace(U=torch.zeros_like(state.U))
    grads = [torch.full((3,), 10.0), torch.full((2, 2), -10.0)]
    upd, _ = tx.update([g.clone() for g in grads], state)
    total = torch.sqrt(sum((u**2).sum() for u in upd))
    torch.testing.assert_close(total, torch.tensor(2.0))
    torch.testing.assert_close(upd[0] / upd[0].norm(), grads[0] / grads[0].norm())


def test_step_normalizer_order() -> None:
    """'1st' divides each block's step by its gradient's largest entry: from Q = I the
    largest change in every block is exactly precond_lr; '2nd' moves less."""
    gen = torch.Generator().manual_seed(3)
    v, h = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    a, b = xmat_math.init(8)
    for order, check in (
        ("1st", lambda m: torch.allclose(m, torch.full_like(m, 0.1))),
        ("2nd", lambda m: bool((m <= 0.1 + 1e-6).all() and (m < 0.1 - 1e-3).any())),
    ):
        na, nb = xmat_math.update(a, b, v, h, lr=0.1, step_normalizer=order)
        change = torch.maximum((na - a).abs(), (nb - b).abs())
        assert check(torch.maximum(change, change.flip(0))), order


def test_affine_factor_rules_in_state() -> None:
    tx = scale_by_affine(max_size_triangular=50, max_skew_triangular=4)
    state = tx.init(
        [torch.zeros(10, 30), torch.zeros(10, 60), torch.zeros(2, 3, 4, 5), torch.zeros(7)]
    )
    shapes = [[tuple(f.shape) for f in qs] for qs in state.Qs]
    assert shapes[0] == [(10, 10), (30, 30)]  # skew 3 <= 4
    assert shapes[1] == [(10, 10), (60,)]  # 60 > max size 50 (and skew 6 > 4)
    assert affine_math.matrix_shape((2, 3, 4, 5)) == (6, 20)
    assert shapes[2] == [(6, 6), (20, 20)]
    assert shapes[3] == [(1,), (7,)]  # vector -> (1, 7): 7 > 4 * 1 is too skewed
