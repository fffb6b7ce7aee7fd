"""Type aliases shared across optiquant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import torch

Tensor: TypeAlias = torch.Tensor
#: A pytree whose leaves are tensors (or ``None`` for frozen entries).
TensorTree: TypeAlias = Any
Params: TypeAlias = TensorTree
Updates: TypeAlias = TensorTree
#: A NamedTuple (or nested tuples of NamedTuples) of tensors.
OptState: TypeAlias = Any
#: A callable from the step count (a 0-d integer tensor or an int) to a value.
Schedule: TypeAlias = Callable[[Any], "float | torch.Tensor"]
Scalar: TypeAlias = "float | int | torch.Tensor"
ScalarOrSchedule: TypeAlias = "float | int | torch.Tensor | Schedule"

__all__ = [
    "OptState",
    "Params",
    "Scalar",
    "ScalarOrSchedule",
    "Schedule",
    "Tensor",
    "TensorTree",
    "Updates",
]
