"""Pytree helpers on top of :mod:`optree`.

optiquant treats ``None`` as a leaf (a frozen or absent entry) so that a tree of
gradients with ``None`` where a parameter received no gradient keeps the same
structure as the tree of parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optree
import torch

from optiquant._typing import TensorTree

__all__ = [
    "all_tensors",
    "check_leaves",
    "check_same_structure",
    "check_tensor_leaves",
    "tree_add",
    "tree_flatten",
    "tree_global_norm",
    "tree_leaves",
    "tree_map",
    "tree_scale",
    "tree_structure",
    "tree_sub",
    "tree_unflatten",
    "tree_vdot",
    "tree_zeros_like",
]


# Specs of flat lists/tuples by (type, length): the common case of a list of parameters
# skips optree's per-leaf registry lookups (about 4x faster for 100 tensors).
_FLAT_SPECS: dict[tuple[type, int], optree.PyTreeSpec] = {}


def _flat_leaves(tree: Any) -> list[Any] | None:
    """``tree`` as a list if it is a plain list/tuple of tensors and ``None``; else None."""
    if type(tree) is not list and type(tree) is not tuple:
        return None
    return list(tree) if all_tensors(tree, allow_none=True) else None


def all_tensors(leaves: Sequence[Any], *, allow_none: bool = False) -> bool:
    """Whether every one of ``leaves`` is a tensor (or ``None``, if ``allow_none``).

    >>> import torch
    >>> all_tensors([torch.ones(1), None]), all_tensors([torch.ones(1), None], allow_none=True)
    (False, True)
    """
    return all(
        issubclass(kind, torch.Tensor) or (allow_none and kind is type(None))
        for kind in set(map(type, leaves))
    )


def tree_flatten(tree: TensorTree) -> tuple[list[Any], optree.PyTreeSpec]:
    """Flatten ``tree`` into its leaves and structure, ``None`` counting as a leaf.

    >>> leaves, spec = tree_flatten({"a": 1, "b": None})
    >>> leaves
    [1, None]
    """
    leaves = _flat_leaves(tree)
    if leaves is None:
        return optree.tree_flatten(tree, none_is_leaf=True)
    key = (type(tree), len(leaves))
    spec = _FLAT_SPECS.get(key)
    if spec is None:
        spec = optree.tree_structure(tree, none_is_leaf=True)
        if len(_FLAT_SPECS) < 4096:
            _FLAT_SPECS[key] = spec
    return leaves, spec


def tree_unflatten(spec: optree.PyTreeSpec, leaves: Sequence[Any]) -> TensorTree:
    """Rebuild a tree of structure ``spec`` from ``leaves``.

    >>> _, spec = tree_flatten({"a": 1, "b": 2})
    >>> tree_unflatten(spec, [3, 4])
    {'a': 3, 'b': 4}
    """
    return optree.tree_unflatten(spec, leaves)


def tree_leaves(tree: TensorTree) -> list[Any]:
    """The leaves of ``tree`` (``None`` included).

    >>> tree_leaves([1, (None, 2)])
    [1, None, 2]
    """
    leaves = _flat_leaves(tree)
    if leaves is not None:
        return leaves
    return optree.tree_leaves(tree, none_is_leaf=True)


def tree_structure(tree: TensorTree) -> optree.PyTreeSpec:
    """The structure of ``tree`` (``None`` counted as a leaf).

    >>> tree_structure({"a": 1}) == tree_structure({"a": None})
    True
    """
    return optree.tree_structure(tree, none_is_leaf=True)


def tree_map(fn: Callable[..., Any], tree: TensorTree, *rest: TensorTree) -> TensorTree:
    """Map ``fn`` over the leaves of ``tree`` and ``rest``; ``None`` leaves stay ``None``.

    >>> import torch
    >>> tree_map(lambda x: x * 2, {"a": torch.tensor(1.0), "b": None})
    {'a': tensor(2.), 'b': None}
    """

    def call(x: Any, *ys: Any) -> Any:
        if x is None:
            return None
        return fn(x, *ys)

    return optree.tree_map(call, tree, *rest, none_is_leaf=True)


def check_tensor_leaves(tree: TensorTree, name: str, *, allow_none: bool = True) -> list[Any]:
    """Return the leaves of ``tree``; raise ``TypeError`` naming ``name`` if one is not a tensor.

    >>> import torch
    >>> check_tensor_leaves({"w": 1.0}, "params")
    Traceback (most recent call last):
    TypeError: params: every leaf must be a torch.Tensor or None, but leaf 0 is float (1.0)
    """
    leaves = tree_leaves(tree)
    check_leaves(leaves, name, allow_none=allow_none)
    return leaves


def check_leaves(leaves: Sequence[Any], name: str, *, allow_none: bool = True) -> None:
    """Raise ``TypeError`` naming ``name`` if one of the flattened ``leaves`` is not a tensor.

    >>> check_leaves([None, "w"], "params")
    Traceback (most recent call last):
    TypeError: params: every leaf must be a torch.Tensor or None, but leaf 1 is str ('w')
    """
    if all_tensors(leaves, allow_none=allow_none):
        return
    for index, leaf in enumerate(leaves):
        if leaf is None and allow_none:
            continue
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(
                f"{name}: every leaf must be a torch.Tensor{' or None' if allow_none else ''}, "
                f"but leaf {index} is {type(leaf).__name__} ({leaf!r:.60})"
            )


def check_same_structure(a: TensorTree, b: TensorTree, name_a: str, name_b: str) -> None:
    """Raise ``ValueError`` if trees ``a`` and ``b`` differ in structure.

    >>> check_same_structure({"a": 1}, {"b": 1}, "params", "grads")
    Traceback (most recent call last):
    ValueError: params and grads must have the same tree structure, ...
    """
    spec_a, spec_b = tree_structure(a), tree_structure(b)
    if spec_a != spec_b:
        raise ValueError(
            f"{name_a} and {name_b} must have the same tree structure, got {spec_a} and {spec_b}"
        )


def tree_zeros_like(tree: TensorTree, *, requires_grad: bool = False) -> TensorTree:
    """A tree of zero tensors shaped like ``tree`` (``None`` leaves kept).

    >>> import torch
    >>> tree_zeros_like({"a": torch.ones(2), "b": None})
    {'a': tensor([0., 0.]), 'b': None}
    """
    return tree_map(
        lambda t: torch.zeros_like(t, memory_format=torch.preserve_format).requires_grad_(
            requires_grad
        ),
        tree,
    )


def tree_add(a: TensorTree, b: TensorTree, alpha: float = 1.0) -> TensorTree:
    """``a + alpha * b`` leaf by leaf.

    >>> import torch
    >>> tree_add([torch.tensor(1.0)], [torch.tensor(2.0)], alpha=0.5)
    [tensor(2.)]
    """
    return tree_map(lambda x, y: x.add(y, alpha=alpha) if y is not None else x, a, b)


def tree_sub(a: TensorTree, b: TensorTree) -> TensorTree:
    """``a - b`` leaf by leaf.

    >>> import torch
    >>> tree_sub([torch.tensor(1.0)], [torch.tensor(2.0)])
    [tensor(-1.)]
    """
    return tree_map(lambda x, y: x - y if y is not None else x, a, b)


def tree_scale(tree: TensorTree, factor: float | torch.Tensor) -> TensorTree:
    """``factor * tree`` leaf by leaf.

    >>> import torch
    >>> tree_scale({"a": torch.tensor(2.0)}, 3.0)
    {'a': tensor(6.)}
    """
    return tree_map(lambda x: x * factor, tree)


def tree_vdot(a: TensorTree, b: TensorTree) -> torch.Tensor:
    """The real inner product ``sum(a_i * b_i)`` over all leaves, as a 0-d tensor.

    >>> import torch
    >>> tree_vdot([torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 4.0])])
    tensor(11.)
    """
    pairs = [
        (x, y) for x, y in zip(tree_leaves(a), tree_leaves(b)) if x is not None and y is not None
    ]
    if not pairs:
        return torch.zeros(())
    return sum(
        (torch.sum(x * y) for x, y in pairs),
        start=torch.zeros((), dtype=pairs[0][0].dtype, device=pairs[0][0].device),
    )


def tree_global_norm(tree: TensorTree, norm_type: float = 2.0) -> torch.Tensor:
    """The norm of all leaves taken together, as a 0-d tensor.

    >>> import torch
    >>> tree_global_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])})
    tensor(5.)
    """
    leaves = [x for x in tree_leaves(tree) if x is not None]
    if not leaves:
        return torch.zeros(())
    norms = torch.stack(
        [torch.linalg.vector_norm(x, norm_type).to(leaves[0].dtype) for x in leaves]
    )
    return torch.linalg.vector_norm(norms, norm_type)
