"""Combinators: apply a transformation to a subset (``masked``), skip non-finite updates."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from optiquant._typing import OptState, Params, Updates
from optiquant.optim.base import GradientTransformation, chain, identity
from optiquant.optim.transform.weight_decay import resolve_mask
from optiquant.tree import tree_flatten, tree_unflatten

__all__ = ["ApplyIfFiniteState", "MaskedState", "apply_if_finite", "chain", "identity", "masked"]


class MaskedState(NamedTuple):
    """The inner transformation's state (built on the masked-in parameters only)."""

    inner_state: Any


def _hide(tree: Any, flags: list[bool]) -> Any:
    leaves, spec = tree_flatten(tree)
    return tree_unflatten(spec, [leaf if flag else None for leaf, flag in zip(leaves, flags)])


def masked(inner: GradientTransformation, mask: Any) -> GradientTransformation:
    """Apply ``inner`` only to the leaves where ``mask`` is true; pass the others through.

    ``mask`` is a tree of bools shaped like the params, or a predicate ``params -> tree``.

    >>> import torch
    >>> from optiquant.optim.transform import scale
    >>> tx = masked(scale(0.0), {"w": True, "b": False})
    >>> p = {"w": torch.ones(1), "b": torch.ones(1)}
    >>> u, _ = tx.update({"w": torch.ones(1), "b": torch.ones(1)}, tx.init(p), p)
    >>> u["w"], u["b"]
    (tensor([0.]), tensor([1.]))
    """

    def init(params: Params) -> OptState:
        flags = resolve_mask(mask, params)
        return MaskedState(inner_state=inner.init(_hide(params, flags)))

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        flags = resolve_mask(mask, params if params is not None else updates)
        leaves, spec = tree_flatten(updates)
        hidden_params = _hide(params, flags) if params is not None else None
        new_inner, inner_state = inner.update(
            _hide(updates, flags), state.inner_state, hidden_params, inplace=inplace, **extra_args
        )
        inner_leaves, _ = tree_flatten(new_inner)
        merged = [new if flag else old for new, old, flag in zip(inner_leaves, leaves, flags)]
        return tree_unflatten(spec, merged), MaskedState(inner_state=inner_state)

    return GradientTransformation(init, update)


class ApplyIfFiniteState(NamedTuple):
    """Counters of :func:`apply_if_finite` and the inner state."""

    notfinite_count: torch.Tensor
    last_finite: torch.Tensor
    total_notfinite: torch.Tensor
    inner_state: Any


def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformation:
    """Run ``inner`` only when every incoming update is finite; otherwise emit zero updates.

    The inner state is left untouched on a skipped step. After more than
    ``max_consecutive_errors`` consecutive non-finite steps the updates are applied anyway
    (so training cannot stall silently; the counters in the state say what happened).

    >>> import torch
    >>> from optiquant.optim.transform import scale
    >>> tx = apply_if_finite(scale(1.0), max_consecutive_errors=3)
    >>> state = tx.init(torch.zeros(1))
    >>> u, state = tx.update(torch.tensor([float("nan")]), state)
    >>> u, int(state.total_notfinite)
    (tensor([0.]), 1)
    """
    if not isinstance(max_consecutive_errors, int) or max_consecutive_errors < 0:
        raise ValueError(
            f"max_consecutive_errors must be an int >= 0, got {max_consecutive_errors!r}"
        )

    def init(params: Params) -> OptState:
        zero = torch.zeros((), dtype=torch.int64)
        return ApplyIfFiniteState(
            zero.clone(), torch.ones((), dtype=torch.bool), zero.clone(), inner.init(params)
        )

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        leaves, spec = tree_flatten(updates)
        present = [u for u in leaves if u is not None]
        finite = all(bool(torch.isfinite(u).all()) for u in present)
        streak = 0 if finite else int(state.notfinite_count) + 1
        if finite or streak > max_consecutive_errors:
            new_updates, inner_state = inner.update(
                updates, state.inner_state, params, inplace=inplace, **extra_args
            )
        else:
            new_updates = tree_unflatten(
                spec, [None if u is None else torch.zeros_like(u) for u in leaves]
            )
            inner_state = state.inner_state
        return new_updates, ApplyIfFiniteState(
            notfinite_count=torch.tensor(streak, dtype=torch.int64),
            last_finite=torch.tensor(finite),
            total_notfinite=state.total_notfinite + (0 if finite else 1),
            inner_state=inner_state,
        )

    return GradientTransformation(init, update)
