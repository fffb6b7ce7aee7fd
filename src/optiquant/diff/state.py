"""Snapshots of a module's (or meta-optimizer's) tensors, restoring them, and cutting history.

Typical MAML loop: take a snapshot of the network before the inner loop, adapt it with a
meta-optimizer, compute the outer loss, then restore the snapshot for the next task::

    init = extract_state_dict(net)          # references to the meta-parameters
    opt_init = extract_state_dict(inner_opt)
    for task in tasks:
        for _ in range(k):
            inner_opt.step(inner_loss(net, task))
        outer_loss(net, task).backward()    # meta-gradients reach init's tensors
        recover_state_dict(net, init)
        recover_state_dict(inner_opt, opt_init)
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from optiquant._typing import TensorTree
from optiquant.diff import _slots
from optiquant.diff.meta import MetaOptimizer
from optiquant.tree import tree_leaves, tree_map

__all__ = ["ModuleState", "extract_state_dict", "recover_state_dict", "stop_gradient"]

By = Literal["reference", "copy", "deepcopy", "ref", "clone", "deepclone"]
_BY = {
    "reference": "reference",
    "ref": "reference",
    "copy": "copy",
    "clone": "copy",
    "deepcopy": "deepcopy",
    "deepclone": "deepcopy",
}


class ModuleState(NamedTuple):
    """A module's parameters and buffers by dotted name (buffers empty if not extracted)."""

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]


def _copier(by: str, device: torch.device | str | None) -> Any:
    if by not in _BY:
        raise ValueError(f"by: expected one of {sorted(set(_BY))}, got {by!r}")
    mode = _BY[by]
    memo: dict[int, torch.Tensor] = {}

    def copy(t: torch.Tensor) -> torch.Tensor:
        if id(t) in memo:
            return memo[id(t)]
        if mode == "reference":
            out = t
        elif mode == "copy":
            out = t.clone()
        else:
            out = t.detach().clone()
            if isinstance(t, nn.Parameter):
                out = nn.Parameter(out, requires_grad=t.requires_grad)
            else:
                out.requires_grad_(t.requires_grad)
        if device is not None:
            out = out.to(device)
        memo[id(t)] = out
        return out

    return copy


def extract_state_dict(
    target: nn.Module | MetaOptimizer,
    *,
    by: By = "reference",
    device: torch.device | str | None = None,
    with_buffers: bool = True,
    detach_buffers: bool = False,
) -> Any:
    """Take a snapshot of a module's tensors (a :class:`ModuleState`) or of an optimizer's state.

    ``by='reference'`` keeps the tensors themselves; ``'copy'`` clones them and keeps the
    autograd history (the copies are differentiable functions of the originals);
    ``'deepcopy'`` clones and detaches them (same ``requires_grad``; ``nn.Parameter`` stays
    a parameter). Tensors shared between names stay shared. ``device`` moves the copies.
    For a module, ``with_buffers`` includes the buffers and ``detach_buffers`` detaches them.

    >>> import torch
    >>> net = torch.nn.BatchNorm1d(2)
    >>> state = extract_state_dict(net, by="deepcopy")
    >>> sorted(state.params), sorted(state.buffers)
    (['bias', 'weight'], ['num_batches_tracked', 'running_mean', 'running_var'])
    >>> state.params["weight"] is net.weight
    False
    """
    copy = _copier(by, device)
    if isinstance(target, MetaOptimizer):
        return tree_map(copy, target.state_dict())
    if not isinstance(target, nn.Module):
        raise TypeError(
            f"target: expected an nn.Module or a MetaOptimizer, got {type(target).__name__}"
        )
    params = {
        name: copy(_slots.read(slot, "params"))
        for name, slot in _slots.named_slots(target, "params").items()
    }
    buffers: dict[str, torch.Tensor] = {}
    if with_buffers:
        for name, slot in _slots.named_slots(target, "buffers").items():
            value = _slots.read(slot, "buffers")
            buffers[name] = copy(value.detach() if detach_buffers else value)
    return ModuleState(params, buffers)


def recover_state_dict(target: nn.Module | MetaOptimizer, state: Any) -> None:
    """Put the tensors of a snapshot from :func:`extract_state_dict` back into ``target``.

    For a module, the names in ``state`` must be exactly the module's parameter names (and
    buffer names, unless the snapshot has no buffers) with the same shapes; nothing is
    changed when they are not.

    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> snapshot = extract_state_dict(net)
    >>> net._parameters["weight"] = net.weight * 2      # what a meta-optimizer step does
    >>> recover_state_dict(net, snapshot)
    >>> net.weight is snapshot.params["weight"]
    True
    """
    if isinstance(target, MetaOptimizer):
        target.load_state_dict(state)
        return
    if not isinstance(target, nn.Module):
        raise TypeError(
            f"target: expected an nn.Module or a MetaOptimizer, got {type(target).__name__}"
        )
    if not isinstance(state, ModuleState):
        raise TypeError(
            "state: expected the ModuleState returned by extract_state_dict(module), got "
            f"{type(state).__name__}"
        )
    plan: list[tuple[_slots.Slot, str, torch.Tensor]] = []
    kinds = [("params", state.params)] + ([("buffers", state.buffers)] if state.buffers else [])
    for kind, saved in kinds:
        slots = _slots.named_slots(target, kind)
        missing = sorted(set(slots) - set(saved))
        unexpected = sorted(set(saved) - set(slots))
        if missing or unexpected:
            raise ValueError(
                f"state does not match the module's {kind}: missing {missing}, "
                f"unexpected {unexpected}"
            )
        for name, slot in slots.items():
            value = saved[name]
            current = _slots.read(slot, kind)
            if not isinstance(value, torch.Tensor) or value.shape != current.shape:
                got = (
                    tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                )
                raise ValueError(
                    f"state.{kind}[{name!r}]: expected a tensor of shape {tuple(current.shape)}, "
                    f"got {got}"
                )
            plan.append((slot, kind, value))
    for slot, kind, value in plan:
        _slots.write(slot, kind, value)


def _cut(t: torch.Tensor) -> torch.Tensor:
    if t.grad_fn is None:
        return t
    return t.detach().requires_grad_(t.requires_grad)


def stop_gradient(target: nn.Module | MetaOptimizer | ModuleState | TensorTree) -> Any:
    """Cut the autograd history of the tensors of ``target``.

    A module's (or meta-optimizer state's) non-leaf tensors are replaced by detached
    leaves with the same values and ``requires_grad``; leaves are kept as they are, so an
    outer optimizer holding them is unaffected. Modules and meta-optimizers are changed in
    place and returned; for a :class:`ModuleState` or a tree of tensors a detached copy of
    the tree is returned.

    >>> import torch
    >>> from optiquant.diff.meta import MetaSGD
    >>> net = torch.nn.Linear(2, 1)
    >>> opt = MetaSGD(net, lr=0.1)
    >>> opt.step(net(torch.ones(1, 2)).sum())
    >>> _ = stop_gradient(net), stop_gradient(opt)
    >>> net.weight.is_leaf and net.weight.requires_grad
    True
    """
    if isinstance(target, MetaOptimizer):
        target.load_state_dict(tree_map(_cut, target.state_dict()))
        return target
    if isinstance(target, nn.Module):
        memo: dict[int, torch.Tensor] = {}
        for kind in ("params", "buffers"):
            for slot in _slots.named_slots(target, kind).values():
                value = _slots.read(slot, kind)
                if value.grad_fn is not None:
                    _slots.write(slot, kind, memo.setdefault(id(value), _cut(value)))
        return target
    if isinstance(target, ModuleState):
        return ModuleState(
            {k: _cut(v) for k, v in target.params.items()},
            {k: _cut(v) for k, v in target.buffers.items()},
        )
    for leaf in tree_leaves(target):
        if leaf is not None and not isinstance(leaf, torch.Tensor):
            raise TypeError(
                "target: expected an nn.Module, a MetaOptimizer, a ModuleState or a tree of "
                f"tensors, got a tree with a {type(leaf).__name__} leaf"
            )
    return tree_map(_cut, target)
