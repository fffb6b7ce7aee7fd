"""Differentiable optimizers that update an ``nn.Module`` in place of its parameters.

A meta-optimizer's :meth:`~MetaOptimizer.step` computes the gradients of a loss with
``create_graph=True``, runs the transformation with ``inplace=False`` and puts the updated
tensors into the module where its parameters were. The module then computes with the
updated tensors, which are differentiable functions of the original parameters (and of
any tensor hyperparameter), so a loss after ``k`` inner steps back-propagates through all
of them: MAML, learning-rate learning, and other unrolled meta-learning.

After a step the module's parameters are ordinary tensors (not ``nn.Parameter`` leaves);
the original leaves stay with whoever holds them (an outer optimizer, or a snapshot from
:func:`~optiquant.diff.extract_state_dict`). Use :func:`~optiquant.diff.recover_state_dict`
to restore them and :func:`~optiquant.diff.stop_gradient` to cut the history.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from optiquant._typing import OptState, ScalarOrSchedule
from optiquant.diff import _slots
from optiquant.optim import alias
from optiquant.optim.base import GradientTransformation
from optiquant.optim.update import apply_updates
from optiquant.tree import check_same_structure

__all__ = [
    "MetaAdaGrad",
    "MetaAdagrad",
    "MetaAdam",
    "MetaAdamW",
    "MetaOptimizer",
    "MetaRMSProp",
    "MetaRMSprop",
    "MetaSGD",
]


def _check_loss(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss: expected a tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(
            f"loss: expected a scalar tensor (one element), got shape {tuple(loss.shape)}; "
            "reduce it first (for example loss.mean())"
        )
    if not loss.requires_grad:
        raise ValueError(
            "loss: does not require grad; compute it from the module's parameters with "
            "autograd enabled"
        )
    return loss


class _Group:
    """One module's distinct parameter tensors, the slots holding each, and their state."""

    def __init__(self, entries: list[tuple[torch.Tensor, list[_slots.Slot]]], state: OptState):
        self.slots = [slots for _, slots in entries]
        self.state = state

    def params(self) -> list[torch.Tensor]:
        return [_slots.read(slots[0], "params") for slots in self.slots]

    def write(self, values: list[torch.Tensor]) -> None:
        for value, slots in zip(values, self.slots):
            for slot in slots:
                _slots.write(slot, "params", value)


class MetaOptimizer:
    """Run a :class:`~optiquant.optim.base.GradientTransformation` differentiably on a module.

    >>> import torch, optiquant.diff as diff
    >>> from optiquant.optim.alias import sgd
    >>> net = torch.nn.Linear(1, 1, bias=False)
    >>> w0 = net.weight                      # the meta-parameter (a leaf)
    >>> opt = diff.MetaOptimizer(net, sgd(lr=0.1))
    >>> opt.step(((net(torch.ones(1, 1)) - 1.0) ** 2).sum())
    >>> net.weight.grad_fn is not None       # now a function of w0
    True
    >>> torch.autograd.grad(net.weight.sum(), w0)[0]   # d(w0 - 0.2 (w0 - 1)) / d w0
    tensor([[0.8000]])
    """

    def __init__(self, module: nn.Module, transformation: GradientTransformation) -> None:
        _slots.check_module(module)
        if not isinstance(transformation, GradientTransformation):
            raise TypeError(
                "transformation: expected a GradientTransformation, got "
                f"{type(transformation).__name__}"
            )
        self.transformation = transformation
        self._groups: list[_Group] = []
        self.add_param_group(module)

    def add_param_group(self, module: nn.Module) -> None:
        """Also update the parameters of ``module`` (which must not already be handled)."""
        _slots.check_module(module)
        entries = _slots.unique_parameters(module)
        known = {id(t) for group in self._groups for t in group.params()}
        for tensor, slots in entries:
            if id(tensor) in known:
                owner, key = slots[0]
                raise ValueError(
                    f"module: parameter {type(owner).__name__}.{key} is already handled by this "
                    "meta-optimizer"
                )
        params = [tensor for tensor, _ in entries]
        self._groups.append(_Group(entries, self.transformation.init(params)))

    def step(self, loss: torch.Tensor) -> None:
        """Replace the module's parameters by their differentiable updates for ``loss``."""
        _check_loss(loss)
        group_params = [group.params() for group in self._groups]
        wanted = [p for params in group_params for p in params if p.requires_grad]
        grads_iter = iter(
            torch.autograd.grad(loss, wanted, create_graph=True, allow_unused=True)
            if wanted
            else ()
        )
        for group, params in zip(self._groups, group_params):
            grads = [next(grads_iter) if p.requires_grad else None for p in params]
            updates, group.state = self.transformation.update(
                grads, group.state, params, inplace=False
            )
            group.write(apply_updates(params, updates, inplace=False))

    def state_dict(self) -> tuple[OptState, ...]:
        """The optimizer state of every parameter group (references, not copies)."""
        return tuple(group.state for group in self._groups)

    def load_state_dict(self, state_dict: tuple[OptState, ...]) -> None:
        """Replace the optimizer state by ``state_dict`` (from :meth:`state_dict`)."""
        if not isinstance(state_dict, (tuple, list)) or len(state_dict) != len(self._groups):
            raise ValueError(
                f"state_dict: expected a tuple of {len(self._groups)} group states, got "
                f"{type(state_dict).__name__}"
                + (f" of length {len(state_dict)}" if isinstance(state_dict, (tuple, list)) else "")
            )
        for index, (group, state) in enumerate(zip(self._groups, state_dict)):
            check_same_structure(group.state, state, "current state", f"state_dict[{index}]")
        for group, state in zip(self._groups, state_dict):
            group.state = state


class MetaSGD(MetaOptimizer):
    """Differentiable SGD with momentum (see :func:`optiquant.optim.alias.sgd`).

    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> opt = MetaSGD(net, lr=0.1, momentum=0.9)
    >>> opt.step(net(torch.ones(1, 2)).sum())
    >>> net.weight.requires_grad and not net.weight.is_leaf
    True
    """

    def __init__(
        self,
        module: nn.Module,
        lr: ScalarOrSchedule,
        momentum: float | torch.Tensor = 0.0,
        weight_decay: float | torch.Tensor = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        moment_requires_grad: bool = True,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            module,
            alias.sgd(
                lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                moment_requires_grad=moment_requires_grad,
                maximize=maximize,
            ),
        )


class MetaAdam(MetaOptimizer):
    """Differentiable Adam (see :func:`optiquant.optim.alias.adam`).

    The square root in the update has a finite derivative at 0, so meta-gradients stay
    finite when some inner gradients are exactly zero (dead units), even with
    ``eps_root=0``.

    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> MetaAdam(net, lr=0.01).step(net(torch.ones(1, 2)).sum())
    >>> net.weight.is_leaf
    False
    """

    def __init__(
        self,
        module: nn.Module,
        lr: ScalarOrSchedule = 1e-3,
        betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
        eps: float | torch.Tensor = 1e-8,
        weight_decay: float | torch.Tensor = 0.0,
        *,
        eps_root: float = 0.0,
        moment_requires_grad: bool = True,
        maximize: bool = False,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(
            module,
            alias.adam(
                lr,
                betas,
                eps,
                weight_decay,
                eps_root=eps_root,
                moment_requires_grad=moment_requires_grad,
                maximize=maximize,
                amsgrad=amsgrad,
            ),
        )


class MetaAdamW(MetaOptimizer):
    """Differentiable AdamW, decoupled weight decay (see :func:`optiquant.optim.alias.adamw`).

    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> MetaAdamW(net, lr=0.01).step(net(torch.ones(1, 2)).sum())
    >>> net.bias.is_leaf
    False
    """

    def __init__(
        self,
        module: nn.Module,
        lr: ScalarOrSchedule = 1e-3,
        betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
        eps: float | torch.Tensor = 1e-8,
        weight_decay: float | torch.Tensor = 1e-2,
        *,
        eps_root: float = 0.0,
        mask: Any = None,
        moment_requires_grad: bool = False,
        maximize: bool = False,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(
            module,
            alias.adamw(
                lr,
                betas,
                eps,
                weight_decay,
                eps_root=eps_root,
                mask=mask,
                moment_requires_grad=moment_requires_grad,
                maximize=maximize,
                amsgrad=amsgrad,
            ),
        )


class MetaAdagrad(MetaOptimizer):
    """Differentiable Adagrad (see :func:`optiquant.optim.alias.adagrad`).

    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> MetaAdagrad(net, lr=0.1).step(net(torch.ones(1, 2)).sum())
    >>> net.weight.is_leaf
    False
    """

    def __init__(
        self,
        module: nn.Module,
        lr: ScalarOrSchedule = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float | torch.Tensor = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float | torch.Tensor = 1e-10,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            module,
            alias.adagrad(
                lr,
                lr_decay,
                weight_decay,
                initial_accumulator_value,
                eps,
                maximize=maximize,
            ),
        )


class MetaRMSProp(MetaOptimizer):
    """Differentiable RMSprop (see :func:`optiquant.optim.alias.rmsprop`).

    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> MetaRMSProp(net, lr=0.01, centered=True).step(net(torch.ones(1, 2)).sum())
    >>> net.weight.is_leaf
    False
    """

    def __init__(
        self,
        module: nn.Module,
        lr: ScalarOrSchedule = 1e-2,
        alpha: float | torch.Tensor = 0.99,
        eps: float | torch.Tensor = 1e-8,
        weight_decay: float | torch.Tensor = 0.0,
        momentum: float | torch.Tensor = 0.0,
        centered: bool = False,
        *,
        initial_scale: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            module,
            alias.rmsprop(
                lr,
                alpha,
                eps,
                weight_decay,
                momentum,
                centered,
                initial_scale=initial_scale,
                nesterov=nesterov,
                maximize=maximize,
            ),
        )


MetaAdaGrad = MetaAdagrad
MetaRMSprop = MetaRMSProp
