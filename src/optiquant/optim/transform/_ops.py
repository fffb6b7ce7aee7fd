"""List-level tensor arithmetic with three execution paths.

Every transformation writes its math once against :class:`ListOps`; the object
decides how each operation runs:

* ``inplace=True, foreach=True``: ``torch._foreach_*_`` kernels, buffers reused;
* ``inplace=True, foreach=False``: a per-tensor loop of in-place ops (the reference);
* ``inplace=False``: new tensors, so autograd records every step (``foreach`` picks
  ``torch._foreach_*`` or per-tensor arithmetic, both differentiable).

Scalars may be numbers, 0-d tensors (possibly requiring grad) or per-tensor lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from optiquant.tree import check_leaves, tree_flatten, tree_leaves, tree_unflatten

Tensors = list[torch.Tensor]
ScalarArg = Any  # float | Tensor | list[float]


def _is_plain(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return True
    if isinstance(value, list):
        return all(isinstance(v, (int, float)) for v in value)
    return False


def use_foreach(foreach: bool | None, *hyperparams: Any) -> bool:
    """Resolve the ``foreach`` option: on by default when every hyperparameter is a number."""
    plain = all(_is_plain(h) for h in hyperparams)
    if foreach is None:
        return plain
    return foreach and plain


def _per(scalar: ScalarArg, index: int) -> Any:
    return scalar[index] if isinstance(scalar, list) else scalar


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` whose derivative is 0 (not inf) where ``x == 0``, at any order."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), 0.0)


class ListOps:
    """Arithmetic on lists of tensors; see the module documentation."""

    def __init__(self, *, inplace: bool, foreach: bool) -> None:
        self.inplace = inplace
        self.foreach = foreach

    # -- elementwise ---------------------------------------------------------------
    def mul(self, xs: Tensors, s: ScalarArg) -> Tensors:
        """``x * s``."""
        if self.foreach:
            if self.inplace:
                torch._foreach_mul_(xs, s)
                return xs
            return list(torch._foreach_mul(xs, s))
        if self.inplace:
            return [x.mul_(_per(s, i)) for i, x in enumerate(xs)]
        return [x * _per(s, i) for i, x in enumerate(xs)]

    def mul_tensors(self, xs: Tensors, ys: Tensors) -> Tensors:
        """``x * y``."""
        if self.foreach:
            if self.inplace:
                torch._foreach_mul_(xs, ys)
                return xs
            return list(torch._foreach_mul(xs, ys))
        if self.inplace:
            return [x.mul_(y) for x, y in zip(xs, ys)]
        return [x * y for x, y in zip(xs, ys)]

    def add(self, xs: Tensors, ys: Tensors, alpha: ScalarArg = 1.0) -> Tensors:
        """``x + alpha * y``."""
        if self.foreach and not isinstance(alpha, list):
            if self.inplace:
                torch._foreach_add_(xs, ys, alpha=alpha)
                return xs
            return list(torch._foreach_add(xs, ys, alpha=alpha))
        if self.inplace:
            return [x.add_(y, alpha=_per(alpha, i)) for i, (x, y) in enumerate(zip(xs, ys))]
        out = []
        for i, (x, y) in enumerate(zip(xs, ys)):
            a = _per(alpha, i)
            out.append(x + y if (isinstance(a, (int, float)) and a == 1) else x + a * y)
        return out

    def add_scalar(self, xs: Tensors, s: ScalarArg) -> Tensors:
        """``x + s``."""
        if self.foreach:
            if self.inplace:
                torch._foreach_add_(xs, s)
                return xs
            return list(torch._foreach_add(xs, s))
        if self.inplace:
            return [x.add_(_per(s, i)) for i, x in enumerate(xs)]
        return [x + _per(s, i) for i, x in enumerate(xs)]

    def lerp(self, xs: Tensors, ys: Tensors, weight: ScalarArg) -> Tensors:
        """``x + weight * (y - x)``."""
        if self.foreach and not isinstance(weight, list):
            if self.inplace:
                torch._foreach_lerp_(xs, ys, weight)
                return xs
            return list(torch._foreach_lerp(xs, ys, weight))
        if self.inplace:
            return [x.lerp_(y, _per(weight, i)) for i, (x, y) in enumerate(zip(xs, ys))]
        out = []
        for i, (x, y) in enumerate(zip(xs, ys)):
            w = _per(weight, i)
            out.append(torch.lerp(x, y, w) if isinstance(w, (int, float)) else x + w * (y - x))
        return out

    def ema_square(self, xs: Tensors, ys: Tensors, decay: ScalarArg) -> Tensors:
        """``decay * x + (1 - decay) * y * y``."""
        if self.foreach and not isinstance(decay, list):
            if self.inplace:
                torch._foreach_mul_(xs, decay)
                torch._foreach_addcmul_(xs, ys, ys, 1.0 - decay)
                return xs
            out = torch._foreach_mul(xs, decay)
            return list(torch._foreach_addcmul(out, ys, ys, 1.0 - decay))
        if self.inplace:
            return [
                x.mul_(_per(decay, i)).addcmul_(y, y, value=1.0 - _per(decay, i))
                for i, (x, y) in enumerate(zip(xs, ys))
            ]
        return [
            _per(decay, i) * x + (1.0 - _per(decay, i)) * (y * y)
            for i, (x, y) in enumerate(zip(xs, ys))
        ]

    def addcmul(self, xs: Tensors, ys: Tensors, zs: Tensors, value: ScalarArg = 1.0) -> Tensors:
        """``x + value * y * z``."""
        if self.foreach and not isinstance(value, list):
            if self.inplace:
                torch._foreach_addcmul_(xs, ys, zs, value)
                return xs
            return list(torch._foreach_addcmul(xs, ys, zs, value))
        if self.inplace:
            return [
                x.addcmul_(y, z, value=_per(value, i))
                for i, (x, y, z) in enumerate(zip(xs, ys, zs))
            ]
        return [x + _per(value, i) * (y * z) for i, (x, y, z) in enumerate(zip(xs, ys, zs))]

    def div(self, xs: Tensors, ys: Tensors) -> Tensors:
        """``x / y``."""
        if self.foreach:
            if self.inplace:
                torch._foreach_div_(xs, ys)
                return xs
            return list(torch._foreach_div(xs, ys))
        if self.inplace:
            return [x.div_(y) for x, y in zip(xs, ys)]
        return [x / y for x, y in zip(xs, ys)]

    def div_scalar(self, xs: Tensors, s: ScalarArg) -> Tensors:
        """``x / s``."""
        if self.foreach:
            if self.inplace:
                torch._foreach_div_(xs, s)
                return xs
            return list(torch._foreach_div(xs, s))
        if self.inplace:
            return [x.div_(_per(s, i)) for i, x in enumerate(xs)]
        return [x / _per(s, i) for i, x in enumerate(xs)]

    def maximum(self, xs: Tensors, ys: Tensors) -> Tensors:
        """Elementwise ``max(x, y)``."""
        if self.foreach:
            if self.inplace:
                torch._foreach_maximum_(xs, ys)
                return xs
            return list(torch._foreach_maximum(xs, ys))
        if self.inplace:
            return [torch.maximum(x, y, out=x) for x, y in zip(xs, ys)]
        return [torch.maximum(x, y) for x, y in zip(xs, ys)]

    def neg(self, xs: Tensors) -> Tensors:
        """``-x``."""
        if self.foreach:
            if self.inplace:
                torch._foreach_neg_(xs)
                return xs
            return list(torch._foreach_neg(xs))
        if self.inplace:
            return [x.neg_() for x in xs]
        return [-x for x in xs]

    def sign(self, xs: Tensors) -> Tensors:
        """``sign(x)``."""
        if self.foreach:
            if self.inplace:
                torch._foreach_sign_(xs)
                return xs
            return list(torch._foreach_sign(xs))
        if self.inplace:
            return [x.sign_() for x in xs]
        return [torch.sign(x) for x in xs]

    def abs(self, xs: Tensors) -> Tensors:
        """``|x|``."""
        if self.foreach:
            if self.inplace:
                torch._foreach_abs_(xs)
                return xs
            return list(torch._foreach_abs(xs))
        if self.inplace:
            return [x.abs_() for x in xs]
        return [torch.abs(x) for x in xs]

    # -- fresh results (never alias an input) -------------------------------------------
    def div_new(self, xs: Tensors, ys: Tensors) -> Tensors:
        """``x / y`` as new tensors."""
        if self.foreach:
            return list(torch._foreach_div(xs, ys))
        return [x / y for x, y in zip(xs, ys)]

    def mul_new(self, xs: Tensors, s: ScalarArg) -> Tensors:
        """``x * s`` as new tensors."""
        if self.foreach:
            return list(torch._foreach_mul(xs, s))
        return [x * _per(s, i) for i, x in enumerate(xs)]

    def sqrt_new(self, xs: Tensors) -> Tensors:
        """``sqrt(x)`` as new tensors; NaN-safe derivative at 0 when differentiable."""
        if self.inplace:
            return list(torch._foreach_sqrt(xs)) if self.foreach else [torch.sqrt(x) for x in xs]
        return [safe_sqrt(x) for x in xs]

    def copy_new(self, xs: Tensors) -> Tensors:
        """Copies of ``xs`` (same values, new storage in place mode)."""
        if self.inplace:
            return [x.clone() for x in xs]
        return list(xs)

    def assign(self, dst: Tensors, src: Tensors) -> Tensors:
        """In place mode copy ``src`` into ``dst``; otherwise return ``src``."""
        if self.inplace:
            if self.foreach:
                torch._foreach_copy_(dst, src)
            else:
                for d, s in zip(dst, src):
                    d.copy_(s)
            return dst
        return list(src)


class Selection:
    """The non-``None`` update leaves and the matching leaves of per-parameter state trees."""

    def __init__(self, updates: Any, state_trees: Sequence[Any], names: Sequence[str]) -> None:
        leaves, spec = tree_flatten(updates)
        check_leaves(leaves, "updates")
        self.spec = spec
        self.leaves = leaves
        self.indices = [i for i, leaf in enumerate(leaves) if leaf is not None]
        self.state_leaves: list[list[Any]] = []
        for tree, name in zip(state_trees, names):
            full = tree_leaves(tree)
            if len(full) != len(leaves):
                raise ValueError(
                    f"updates do not match the optimizer state: {len(leaves)} update leaves but "
                    f"{len(full)} leaves in state.{name} (was the state built for other params?)"
                )
            if type(None) in set(map(type, full)) and any(full[i] is None for i in self.indices):
                raise ValueError(
                    f"updates has a tensor where state.{name} has None (that parameter was "
                    "frozen when the state was built)"
                )
            self.state_leaves.append(full)

    @property
    def updates(self) -> Tensors:
        """The non-``None`` update leaves."""
        return [self.leaves[i] for i in self.indices]

    def state(self, k: int) -> Tensors:
        """The leaves of state tree ``k`` at the non-``None`` update positions."""
        full = self.state_leaves[k]
        return [full[i] for i in self.indices]

    def updates_tree(self, values: Sequence[Any]) -> Any:
        """A tree like ``updates`` with ``values`` at the non-``None`` positions."""
        out = list(self.leaves)
        for i, v in zip(self.indices, values):
            out[i] = v
        return tree_unflatten(self.spec, out)

    def state_tree(self, k: int, values: Sequence[Any]) -> Any:
        """State tree ``k`` with ``values`` at the updated positions (others unchanged)."""
        out = list(self.state_leaves[k])
        for i, v in zip(self.indices, values):
            out[i] = v
        return tree_unflatten(self.spec, out)


def new_counts(counts: Tensors, inplace: bool) -> tuple[Tensors, list[float]]:
    """Increment per-leaf step counters; return them and their values as floats."""
    if inplace:
        if counts:
            torch._foreach_add_(counts, 1.0)
        out = counts
    else:
        out = list(torch._foreach_add(counts, 1.0)) if counts else []
    return out, count_values(out)


def count_values(counts: Tensors) -> list[float]:
    """The values of 0-d step counters as floats (one host transfer for all)."""
    if not counts:
        return []
    try:
        values = torch.stack([c.detach() for c in counts]).tolist()
    except RuntimeError:  # counters on several devices
        values = [c.item() for c in counts]
    return [float(v) for v in values]
