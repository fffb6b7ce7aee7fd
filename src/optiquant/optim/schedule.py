"""Step-size schedules: callables from the step count to a value.

A schedule takes the number of updates done so far (an ``int`` or a 0-d integer tensor)
and returns a number; if its parameters are tensors (to be meta-learned) the result is a
tensor that autograd can go through.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "constant_schedule",
    "cosine_decay_schedule",
    "exponential_decay",
    "join_schedules",
    "linear_schedule",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "warmup_cosine_decay_schedule",
]

Value = Any  # float | torch.Tensor
Schedule = Callable[[Any], Value]


def _count(count: Any) -> int:
    if isinstance(count, torch.Tensor):
        return int(count.item())
    return int(count)


def _check_steps(value: int, name: str, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def constant_schedule(value: Value) -> Schedule:
    """Always ``value``.

    >>> constant_schedule(0.1)(100)
    0.1
    """
    return lambda count: value


def polynomial_schedule(
    init_value: Value,
    end_value: Value,
    power: float,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    """From ``init_value`` to ``end_value`` as ``(1 - frac) ** power`` over ``transition_steps``.

    >>> s = polynomial_schedule(1.0, 0.0, power=2, transition_steps=4)
    >>> [s(i) for i in range(6)]
    [1.0, 0.5625, 0.25, 0.0625, 0.0, 0.0]
    """
    _check_steps(transition_steps, "transition_steps")
    _check_steps(transition_begin, "transition_begin", 0)

    def schedule(count: Any) -> Value:
        done = min(max(_count(count) - transition_begin, 0), transition_steps)
        frac = 1.0 - done / transition_steps
        return (init_value - end_value) * frac**power + end_value

    return schedule


def linear_schedule(
    init_value: Value, end_value: Value, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """Linear interpolation from ``init_value`` to ``end_value``.

    >>> s = linear_schedule(0.0, 1.0, transition_steps=4)
    >>> [s(i) for i in range(5)]
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    return polynomial_schedule(init_value, end_value, 1.0, transition_steps, transition_begin)


def exponential_decay(
    init_value: Value,
    decay_rate: float,
    transition_steps: int = 1,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """``init_value * decay_rate ** ((count - begin) / transition_steps)``, optionally stepped.

    ``end_value`` bounds the value (a floor when decaying, a ceiling when growing).

    >>> s = exponential_decay(1.0, 0.5, transition_steps=2, staircase=True)
    >>> [s(i) for i in range(5)]
    [1.0, 1.0, 0.5, 0.5, 0.25]
    """
    _check_steps(transition_steps, "transition_steps")
    _check_steps(transition_begin, "transition_begin", 0)
    if decay_rate <= 0:
        raise ValueError(f"decay_rate must be > 0, got {decay_rate!r}")

    def schedule(count: Any) -> Value:
        exponent = max(_count(count) - transition_begin, 0) / transition_steps
        if staircase:
            exponent = math.floor(exponent)
        value = init_value * decay_rate**exponent
        if end_value is not None:
            bound = float(end_value)
            value = max(value, bound) if decay_rate < 1 else min(value, bound)
        return value

    return schedule


def cosine_decay_schedule(
    init_value: Value, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> Schedule:
    """Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps``.

    >>> s = cosine_decay_schedule(1.0, decay_steps=2)
    >>> [round(s(i), 6) for i in range(4)]
    [1.0, 0.5, 0.0, 0.0]
    """
    _check_steps(decay_steps, "decay_steps")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")

    def schedule(count: Any) -> Value:
        frac = min(_count(count), decay_steps) / decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * frac))
        return init_value * ((1.0 - alpha) * cosine**exponent + alpha)

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[i]`` from ``boundaries[i-1]``; each one restarts its count at 0.

    >>> s = join_schedules([constant_schedule(1.0), linear_schedule(1.0, 0.0, 2)], [2])
    >>> [s(i) for i in range(5)]
    [1.0, 1.0, 1.0, 0.5, 0.0]
    """
    if len(schedules) != len(boundaries) + 1:
        raise ValueError(
            f"join_schedules needs one more schedule than boundaries, got {len(schedules)} "
            f"schedules and {len(boundaries)} boundaries"
        )
    if list(boundaries) != sorted(boundaries):
        raise ValueError(f"boundaries must be increasing, got {list(boundaries)}")

    def schedule(count: Any) -> Value:
        step = _count(count)
        start = 0
        for fn, boundary in zip(schedules, boundaries):
            if step < boundary:
                return fn(step - start)
            start = boundary
        return schedules[-1](step - start)

    return schedule


def warmup_cosine_decay_schedule(
    init_value: Value,
    peak_value: Value,
    warmup_steps: int,
    decay_steps: int,
    end_value: Value = 0.0,
    exponent: float = 1.0,
) -> Schedule:
    """Linear warm-up to ``peak_value``, then cosine decay to ``end_value``.

    ``decay_steps`` counts the whole schedule, warm-up included.

    >>> s = warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=2, decay_steps=4)
    >>> [round(s(i), 6) for i in range(5)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    _check_steps(warmup_steps, "warmup_steps", 0)
    _check_steps(decay_steps, "decay_steps")
    if decay_steps <= warmup_steps:
        raise ValueError(f"decay_steps ({decay_steps}) must exceed warmup_steps ({warmup_steps})")
    alpha_free = decay_steps - warmup_steps

    def cosine(count: Any) -> Value:
        frac = min(_count(count), alpha_free) / alpha_free
        c = (0.5 * (1.0 + math.cos(math.pi * frac))) ** exponent
        return (peak_value - end_value) * c + end_value

    if warmup_steps == 0:
        return cosine
    return join_schedules(
        [linear_schedule(init_value, peak_value, warmup_steps), cosine], [warmup_steps]
    )


def piecewise_constant_schedule(
    init_value: Value, boundaries_and_scales: dict[int, float] | None = None
) -> Schedule:
    """``init_value`` multiplied by each ``scale`` once the count reaches its boundary.

    >>> s = piecewise_constant_schedule(1.0, {2: 0.5, 4: 0.1})
    >>> [round(s(i), 6) for i in range(6)]
    [1.0, 1.0, 0.5, 0.5, 0.05, 0.05]
    """
    items = sorted((boundaries_and_scales or {}).items())
    for boundary, factor in items:
        if boundary < 0 or factor < 0:
            raise ValueError(f"boundaries and scales must be >= 0, got {boundary!r}: {factor!r}")

    def schedule(count: Any) -> Value:
        step = _count(count)
        value = init_value
        for boundary, factor in items:
            if step >= boundary:
                value = value * factor
        return value

    return schedule
