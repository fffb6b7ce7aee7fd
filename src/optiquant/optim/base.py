"""The functional optimizer protocol.

A :class:`GradientTransformation` is a pair of pure functions:

* ``init(params) -> state`` builds the state (a NamedTuple of tensors, or nested
  tuples of them) for a pytree of parameters;
* ``update(updates, state, params=None, *, inplace=True, **extra_args) ->
  (updates, state)`` transforms a pytree of gradients (or updates from an earlier
  transformation) and returns the new updates and the new state.

With ``inplace=True`` the incoming updates and the state buffers may be reused and
mutated (fast, no autograd graph). With ``inplace=False`` nothing passed in is
mutated and every output is a differentiable function of the inputs, the state and
tensor hyperparameters. ``None`` leaves mark frozen parameters and are passed
through untouched. ``extra_args`` carry optional per-step inputs that some
transformations use (for example Hessian-vector products); others ignore them.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from optiquant._typing import OptState, Params, Updates

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "InitFn",
    "UpdateFn",
    "chain",
    "identity",
]


class InitFn(Protocol):
    """Builds the optimizer state for ``params``."""

    def __call__(self, params: Params) -> OptState: ...


class UpdateFn(Protocol):
    """Transforms ``updates`` given the ``state`` (and optionally ``params``)."""

    def __call__(
        self,
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pure ``(init, update)`` pair; see the module documentation.

    >>> import torch, optiquant as oq
    >>> tx = oq.sgd(lr=0.1)
    >>> params = {"w": torch.tensor([1.0, 2.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": torch.tensor([1.0, 1.0])}, state, params)
    >>> updates["w"]
    tensor([-0.1000, -0.1000])
    """

    init: InitFn
    update: UpdateFn
    #: Optional ``apply_fused(params, grads, state) -> state | None``: update the params in
    #: place in one fused pass, as ``update`` + ``apply_updates`` would; returns ``None``
    #: (having changed nothing) when these inputs cannot take the fused path.
    apply_fused: Any = None

    def chain(self, *others: GradientTransformation) -> GradientTransformation:
        """This transformation followed by ``others``."""
        return chain(self, *others)


class EmptyState(NamedTuple):
    """The state of a stateless transformation."""


def identity() -> GradientTransformation:
    """A transformation that returns the updates unchanged.

    >>> import torch
    >>> tx = identity()
    >>> tx.update(torch.ones(2), tx.init(torch.ones(2)))[0]
    tensor([1., 1.])
    """

    def init(params: Params) -> OptState:
        del params
        return EmptyState()

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        del params, inplace, extra_args
        return updates, state

    return GradientTransformation(init, update)


def chain(*transformations: GradientTransformation) -> GradientTransformation:
    """Apply ``transformations`` one after the other.

    The state is a tuple with one entry per transformation.

    >>> import torch
    >>> from optiquant.optim.transform import scale
    >>> tx = chain(scale(2.0), scale(3.0))
    >>> tx.update(torch.ones(1), tx.init(torch.ones(1)))[0]
    tensor([6.])
    """
    for index, tx in enumerate(transformations):
        if not isinstance(tx, GradientTransformation):
            raise TypeError(
                f"chain: argument {index} must be a GradientTransformation, got {type(tx).__name__}"
            )
    if len(transformations) == 1:
        return transformations[0]
    init_fns = tuple(tx.init for tx in transformations)
    update_fns = tuple(tx.update for tx in transformations)

    def init(params: Params) -> OptState:
        return tuple(fn(params) for fn in init_fns)

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        if not isinstance(state, tuple) or len(state) != len(update_fns):
            raise ValueError(
                f"state: expected a tuple of {len(update_fns)} states (one per chained "
                f"transformation), got {type(state).__name__}"
                + (f" of length {len(state)}" if isinstance(state, tuple) else "")
            )
        new_state = []
        for fn, sub_state in zip(update_fns, state):
            updates, sub_state = fn(updates, sub_state, params, inplace=inplace, **extra_args)
            new_state.append(sub_state)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)
