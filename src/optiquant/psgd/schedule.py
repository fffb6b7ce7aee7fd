"""How often the preconditioner is refitted: the probability schedule and its clock.

PSGD does not need to refit its preconditioner every step. A probability ``p(t)``
says which fraction of steps refit it. optiquant turns the probability into a
deterministic decision: the probabilities are summed (in exact integer units of
``2**-32``) and a refit happens whenever the running sum crosses the next whole
number. So the first step always refits (for any ``p > 0``), the number of refits
after ``t`` steps is ``ceil(p(0) + ... + p(t-1))`` (up to the ``2**-32``
quantisation), and every process makes the same decisions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from optiquant.psgd._common import check_number

__all__ = [
    "PROB_UNITS",
    "PrecondUpdateProbSchedule",
    "clock_tick",
    "precond_update_prob_schedule",
    "quantize_probability",
]

#: One update's worth of accumulated probability.
PROB_UNITS = 1 << 32


@dataclasses.dataclass(frozen=True)
class PrecondUpdateProbSchedule:
    """``p(n) = clip(max_prob * exp(-decay * (n - flat_start)), min_prob, max_prob)``.

    A frozen dataclass, so it pickles and compares by value. Called with an int it
    returns a float; with a tensor it returns a float tensor.

    >>> s = PrecondUpdateProbSchedule()
    >>> s(0), s(500), round(s(1193), 3), s(10_000)
    (1.0, 1.0, 0.5, 0.03)
    """

    max_prob: float = 1.0
    min_prob: float = 0.03
    decay: float = 0.001
    flat_start: int = 500

    def __post_init__(self) -> None:
        check_number("max_prob", self.max_prob, low=0.0, high=1.0)
        check_number("min_prob", self.min_prob, low=0.0, high=1.0)
        check_number("decay", self.decay, low=0.0)
        check_number("flat_start", self.flat_start, low=0.0)
        if self.min_prob > self.max_prob:
            raise ValueError(
                f"min_prob: expected a value <= max_prob ({self.max_prob}), got {self.min_prob}"
            )

    def __call__(self, count: Any) -> Any:
        if isinstance(count, torch.Tensor):
            n = count.to(torch.float64)
            p = self.max_prob * torch.exp(-self.decay * (n - self.flat_start))
            return p.clamp(self.min_prob, self.max_prob).to(torch.get_default_dtype())
        q = self.max_prob * math.exp(-self.decay * (float(count) - self.flat_start))
        return min(max(q, self.min_prob), self.max_prob)


def precond_update_prob_schedule(
    max_prob: float = 1.0, min_prob: float = 0.03, decay: float = 0.001, flat_start: int = 500
) -> PrecondUpdateProbSchedule:
    """The default preconditioner-update schedule: flat at ``max_prob``, then an exponential
    anneal down to ``min_prob``.

    >>> sched = precond_update_prob_schedule(min_prob=0.1, flat_start=10)
    >>> sched(5), sched(100_000)
    (1.0, 0.1)
    """
    return PrecondUpdateProbSchedule(max_prob, min_prob, decay, flat_start)


def quantize_probability(p: float) -> int:
    """``p`` in integer units of ``2**-32`` (raises ``ValueError`` outside ``[0, 1]``).

    >>> quantize_probability(0.5) == PROB_UNITS // 2
    True
    """
    if not math.isfinite(p) or p < 0.0 or p > 1.0:
        raise ValueError(f"preconditioner_update_probability: expected a value in [0, 1], got {p}")
    return round(p * PROB_UNITS)


def clock_tick(accumulated: int, p: float) -> tuple[int, bool]:
    """Advance the accumulated probability by ``p``; say whether to refit this step.

    >>> acc, fits = 0, []
    >>> for _ in range(8):
    ...     acc, fit = clock_tick(acc, 0.25)
    ...     fits.append(fit)
    >>> fits
    [True, False, False, False, True, False, False, False]
    """
    q = quantize_probability(p)
    new = accumulated + q
    before = -(-accumulated // PROB_UNITS)
    after = -(-new // PROB_UNITS)
    return new, after > before
