"""The update-probability schedule and the deterministic refit clock."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from optiquant.psgd import precond_update_prob_schedule, scale_by_kron
from optiquant.psgd.schedule import PROB_UNITS, clock_tick, quantize_probability


def test_schedule_matches_formula() -> None:
    sched = precond_update_prob_schedule(max_prob=0.9, min_prob=0.05, decay=0.002, flat_start=100)
    for n in [0, 50, 100, 101, 500, 1000, 1500, 5000]:
        expected = min(max(0.9 * math.exp(-0.002 * (n - 100)), 0.05), 0.9)
        assert sched(n) == pytest.approx(expected, rel=1e-12)
        assert float(sched(torch.tensor(n))) == pytest.approx(expected, rel=1e-6)


def test_default_schedule_values() -> None:
    sched = precond_update_prob_schedule()
    assert sched(0) == 1.0 and sched(500) == 1.0
    # exp(-0.001 * 693.147) = 0.5 ; floor reached once exp(...) < 0.03
    assert sched(500 + round(1000 * math.log(2))) == pytest.approx(0.5, abs=1e-3)
    assert sched(500 + 3507) == 0.03
    assert pickle.loads(pickle.dumps(sched)) == sched


@pytest.mark.parametrize(
    "kwargs", [{"max_prob": 1.5}, {"min_prob": -0.1}, {"min_prob": 0.5, "max_prob": 0.2}]
)
def test_schedule_rejects_bad_values(kwargs) -> None:
    with pytest.raises(ValueError):
        precond_update_prob_schedule(**kwargs)


@pytest.mark.parametrize("p", [1.0, 0.5, 0.25, 0.125, 0.3, 0.03, 0.0])
def test_clock_rate_is_exact(p: float) -> None:
    acc, fits, first = 0, 0, None
    steps = 2000
    for t in range(steps):
        acc, fit = clock_tick(acc, p)
        fits += fit
        if fit and first is None:
            first = t
    # exact: the number of refits is ceil of the summed (2**-32-quantised) probability
    assert fits == -(-steps * quantize_probability(p) // PROB_UNITS)
    # ceil(sum p): at most one refit ahead of the exact average, never behind it
    assert -1e-6 <= fits - steps * p < 1.0 + 1e-6
    if p > 0:
        assert first == 0  # the very first step always refits


def test_clock_follows_a_schedule_exactly() -> None:
    sched = precond_update_prob_schedule(flat_start=20, decay=0.01, min_prob=0.1)
    acc, fits, total = 0, 0, 0.0
    for t in range(1500):
        acc, fit = clock_tick(acc, sched(t))
        fits += fit
        total += sched(t)
        assert -1e-6 <= fits - total < 1.0 + 1e-6  # at most one refit ahead, never behind


def test_clock_rejects_bad_probability() -> None:
    with pytest.raises(ValueError, match="preconditioner_update_probability"):
        clock_tick(0, 1.5)
    with pytest.raises(ValueError, match="preconditioner_update_probability"):
        clock_tick(0, float("nan"))


def _fit_steps(tx, steps: int, state=None):
    w = torch.zeros(4, 3)
    state = tx.init(w) if state is None else state
    fitted = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        before = state.Qs[0].clone()
        _, state = tx.update(torch.randn(4, 3, generator=gen), state)
        fitted.append(not torch.equal(before, state.Qs[0]))
    return fitted, state


def test_transform_refits_at_the_stated_rate() -> None:
    tx = scale_by_kron(b1=0.0, preconditioner_update_probability=0.25)
    fitted, state = _fit_steps(tx, 12)
    assert fitted == [True, False, False, False] * 3
    assert int(state.count) == 12


def test_schedule_state_resumes_exactly() -> None:
    """The clock lives in the state: a restored state makes the same decisions."""
    tx = scale_by_kron(b1=0.0, preconditioner_update_probability=0.3)
    fitted_all, _ = _fit_steps(tx, 10)
    fitted_a, state = _fit_steps(tx, 10)
    assert fitted_a == fitted_all
    restored = type(state)(*[s.clone() if isinstance(s, torch.Tensor) else s for s in state])
    more_1, _ = _fit_steps(tx, 7, state)
    more_2, _ = _fit_steps(tx, 7, restored)
    assert more_1 == more_2
    assert sum(fitted_all + more_1) == -(-17 * quantize_probability(0.3) // PROB_UNITS)


def test_schedule_callable_is_used() -> None:
    tx = scale_by_kron(b1=0.0, preconditioner_update_probability=lambda n: 1.0 if n < 3 else 0.0)
    fitted, _ = _fit_steps(tx, 8)
    assert fitted == [True, True, True] + [False] * 5
