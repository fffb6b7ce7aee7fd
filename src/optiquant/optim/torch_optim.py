"""``torch.optim.Optimizer`` front ends over any gradient transformation.

:class:`Optimizer` runs a :class:`~optiquant.optim.base.GradientTransformation` on the
parameters' ``.grad`` (parameters whose ``grad`` is ``None`` are skipped, and
``p.grad`` is never modified). The named classes (:class:`Adam`, :class:`SGD`, ...) build
their transformation from each param group's hyperparameters, so per-group options,
``torch.optim.lr_scheduler`` and ``state_dict``/``load_state_dict`` work as with
``torch.optim``. Per-parameter state lives in ``self.state[p]`` under readable keys.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import optree
import torch

from optiquant.optim import _fused, alias
from optiquant.optim.base import GradientTransformation
from optiquant.optim.update import apply_updates
from optiquant.tree import tree_unflatten

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Lion",
    "NAdam",
    "Optimizer",
    "RAdam",
    "RMSProp",
    "RMSprop",
]

_GROUP_PREFIX = "group/"


def _path_key(accessor: Any, skip: int | None) -> str:
    parts = []
    for depth, entry in enumerate(accessor):
        if depth == skip:
            continue
        name = getattr(entry, "field", None)
        parts.append(str(name if isinstance(name, str) else entry.entry))
    return ".".join(parts) or "value"


def _layout(state: Any, n_params: int) -> tuple[Any, list[tuple[int | None, str]]]:
    """For each state leaf: the index of the parameter it belongs to (or None) and its key."""
    accessors, _, spec = optree.tree_flatten_with_accessor(state, none_is_leaf=True)
    layout: list[tuple[int | None, str]] = []
    for accessor in accessors:
        owner: int | None = None
        depth_of_owner: int | None = None
        for depth, entry in enumerate(accessor):
            if entry.type is list and n_params > 0:
                owner, depth_of_owner = int(entry.entry), depth
                break
        layout.append((owner, _path_key(accessor, depth_of_owner)))
    return spec, layout


class Optimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that runs ``transformation`` on every param group.

    >>> import torch, optiquant as oq
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = oq.Optimizer([w], oq.sgd(lr=0.1))
    >>> w.grad = torch.tensor([2.0])
    >>> opt.step()
    >>> w.data
    tensor([0.8000])
    """

    #: Set by subclasses whose transformation needs whole tensors (PSGD's Kron multiplies
    #: along every dimension): on FSDP2-sharded (DTensor) parameters their transformation
    #: then runs on all-gathered whole tensors (``optiquant.distributed.gathered``).
    whole_tensors: ClassVar[bool] = False

    def __init__(
        self,
        params: Iterable[Any],
        transformation: GradientTransformation | None = None,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        if transformation is not None and not isinstance(transformation, GradientTransformation):
            raise TypeError(
                "transformation must be a GradientTransformation, got "
                f"{type(transformation).__name__}"
            )
        if transformation is None and type(self)._build is Optimizer._build:
            raise TypeError("Optimizer needs a transformation: Optimizer(params, transformation)")
        self._fixed = transformation
        self._built: dict[int, tuple[tuple[Any, ...], GradientTransformation]] = {}
        self._live: dict[int, tuple[Any, Any, list[tuple[int | None, str]]]] = {}
        super().__init__(params, dict(defaults or {}))

    # -- which transformation each group runs ----------------------------------------------
    def _build(self, group: dict[str, Any]) -> GradientTransformation:
        """The transformation for ``group`` (subclasses build it from the hyperparameters)."""
        assert self._fixed is not None
        return self._fixed

    def _transformation(self, index: int, group: dict[str, Any]) -> GradientTransformation:
        if self._fixed is not None:
            return self._fixed
        key = tuple(
            (k, v.data_ptr() if isinstance(v, torch.Tensor) else v)
            for k, v in sorted(group.items())
            if k not in ("params", "initial_lr")
        )
        cached = self._built.get(index)
        if cached is None or cached[0] != key:
            tx = self._build(group)
            if self.whole_tensors and _fused.has_dtensor(group["params"]):
                from optiquant.distributed.gathered import gathered

                tx = gathered(tx)
            cached = (key, tx)
            self._built[index] = cached
        return cached[1]

    # -- state kept per parameter in self.state ------------------------------------------------
    def _group_state(
        self, index: int, params: list[torch.Tensor], tx: GradientTransformation
    ) -> Any:
        live = self._live.get(index)
        if live is not None:
            return live[0]
        if params and params[0] in self.state and self.state[params[0]]:
            template = tx.init(params)
            spec, layout = _layout(template, len(params))
            leaves = []
            for (owner, key), fresh in zip(layout, optree.tree_leaves(template, none_is_leaf=True)):
                store = self.state[params[owner if owner is not None else 0]]
                name = key if owner is not None else _GROUP_PREFIX + key
                if name not in store:
                    raise ValueError(
                        f"optimizer state for param group {index} lacks entry {name!r}"
                    )
                value = store[name]
                if isinstance(fresh, torch.Tensor):
                    if not isinstance(value, torch.Tensor) or value.shape != fresh.shape:
                        raise ValueError(
                            f"optimizer state entry {name!r} of param group {index} has shape "
                            f"{getattr(value, 'shape', None)}, expected {tuple(fresh.shape)}"
                        )
                    value = value.to(device=fresh.device, dtype=fresh.dtype)
                leaves.append(value)
            state = tree_unflatten(spec, leaves)
        else:
            state = tx.init(params)
            spec, layout = _layout(state, len(params))
        self._store(index, params, state, spec, layout)
        return state

    def _store(
        self, index: int, params: list[torch.Tensor], state: Any, spec: Any, layout: Any
    ) -> None:
        leaves = optree.tree_leaves(state, none_is_leaf=True)
        for (owner, key), leaf in zip(layout, leaves):
            if owner is None:
                self.state[params[0]][_GROUP_PREFIX + key] = leaf
            else:
                self.state[params[owner]][key] = leaf
        self._live[index] = (state, spec, layout)

    # -- torch.optim API ----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Update every parameter that has a gradient; return ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            params: list[torch.Tensor] = group["params"]
            grads = [p.grad for p in params]
            if all(g is None for g in grads):
                continue
            for g in grads:
                if g is not None and g.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            tx = self._transformation(index, group)
            state = self._group_state(index, params, tx)
            new_state = tx.apply_fused(params, grads, state) if tx.apply_fused is not None else None
            if new_state is None:
                owned = [None if g is None else g.clone() for g in grads]
                updates, new_state = tx.update(owned, state, params, inplace=True)
                apply_updates(params, updates, inplace=True)
            if new_state is not state:
                _, spec, layout = self._live[index]
                self._store(index, params, new_state, spec, layout)
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (its hyperparameters default to the constructor's)."""
        super().add_param_group(param_group)
        if hasattr(self, "_live"):
            self._live.pop(len(self.param_groups) - 1, None)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict`; entries keep their own dtypes."""
        saved = copy.copy(state_dict)
        groups = saved["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(groups)} param groups, this optimizer has "
                f"{len(self.param_groups)}"
            )
        for i, (mine, theirs) in enumerate(zip(self.param_groups, groups)):
            if len(mine["params"]) != len(theirs["params"]):
                raise ValueError(
                    f"param group {i} has {len(mine['params'])} params but the state_dict has "
                    f"{len(theirs['params'])}"
                )
        id_map = {
            saved_id: p
            for mine, theirs in zip(self.param_groups, groups)
            for saved_id, p in zip(theirs["params"], mine["params"])
        }
        new_state: dict[Any, dict[str, Any]] = {}
        for saved_id, entries in saved["state"].items():
            if saved_id not in id_map:
                raise ValueError(f"state_dict has state for unknown parameter id {saved_id!r}")
            new_state[id_map[saved_id]] = {
                k: (v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v))
                for k, v in entries.items()
            }
        from collections import defaultdict

        self.state = defaultdict(dict, new_state)
        for mine, theirs in zip(self.param_groups, groups):
            for key, value in theirs.items():
                if key != "params":
                    mine[key] = value
        self._live.clear()
        self._built.clear()


def _hyper(group: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: group[name] for name in names}


class SGD(Optimizer):
    """``torch.optim.SGD`` on optiquant's transformations (same arguments).

    >>> import torch, optiquant as oq
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = oq.SGD([w], lr=0.1, momentum=0.9)
    >>> w.grad = torch.tensor([2.0])
    >>> opt.step()
    >>> w.data
    tensor([0.8000])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        alias.sgd(lr, momentum, dampening, weight_decay, nesterov, maximize=maximize)  # validates
        super().__init__(
            params,
            defaults=dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                maximize=maximize,
                foreach=foreach,
            ),
        )

    def _build(self, group: dict[str, Any]) -> GradientTransformation:
        return alias.sgd(
            **_hyper(
                group,
                "lr",
                "momentum",
                "dampening",
                "weight_decay",
                "nesterov",
                "maximize",
                "foreach",
            )
        )


class Adam(Optimizer):
    """``torch.optim.Adam`` on optiquant's transformations; fused CPU kernel when possible.

    >>> import torch, optiquant as oq
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = oq.Adam([w], lr=0.1)
    >>> w.grad = torch.tensor([2.0])
    >>> opt.step()
    >>> w.data
    tensor([0.9000])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        eps_root: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        self._decoupled = False
        alias.adam(
            lr, betas, eps, weight_decay, eps_root=eps_root, maximize=maximize, amsgrad=amsgrad
        )
        super().__init__(
            params,
            defaults=dict(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                amsgrad=amsgrad,
                eps_root=eps_root,
                maximize=maximize,
                foreach=foreach,
            ),
        )

    def _build(self, group: dict[str, Any]) -> GradientTransformation:
        fn = alias.adamw if self._decoupled else alias.adam
        return fn(
            **_hyper(
                group,
                "lr",
                "betas",
                "eps",
                "weight_decay",
                "eps_root",
                "maximize",
                "amsgrad",
                "foreach",
            )
        )


class AdamW(Adam):
    """``torch.optim.AdamW`` on optiquant's transformations; fused CPU kernel when possible.

    >>> import torch, optiquant as oq
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = oq.AdamW([w], lr=0.1, weight_decay=0.0)
    >>> w.grad = torch.tensor([2.0])
    >>> opt.step()
    >>> w.data
    tensor([0.9000])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        eps_root: float = 0.0,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            eps_root=eps_root,
            maximize=maximize,
            foreach=foreach,
        )
        self._decoupled = True


class Adamax(Optimizer):
    """``torch.optim.Adamax`` on optiquant's transformations.

    >>> import torch, optiquant as oq
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = oq.Adamax([w], lr=0.1)
    >>> w.grad = torch.tensor([2.0])
    >>> opt.step()
    >>> w.data
    tensor([0.9000])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        alias.adamax(lr, betas, eps, weight_decay, maximize=maximize)
        super().__init__(
            params,
            defaults=dict(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                maximize=maximize,
                foreach=foreach,
            ),
        )

    def _build(self, group: dict[str, Any]) -> GradientTransformation:
        return alias.adamax(
            **_hyper(group, "lr", "betas", "eps", "weight_decay", "maximize", "foreach")
        )


class RAdam(Optimizer):
    """``torch.optim.RAdam`` on optiquant's transformations.

    >>> import torch, optiquant as oq
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = oq.RAdam([w], lr=0.1)
    >>> w.grad = torch.tensor([2.0])
    >>> opt.step()
    >>> w.data
    tensor([0.8000])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        alias.radam(lr, betas, eps, weight_decay, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(
            params,
            defaults=dict(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                decoupled_weight_decay=decoupled_weight_decay,
                maximize=maximize,
                foreach=foreach,
            ),
        )

    def _build(self, group: dict[str, Any]) -> GradientTransformation:
        return alias.radam(
            **_hyper(
                group,
                "lr",
                "betas",
                "eps",
                "weight_decay",
                "decoupled_weight_decay",
                "maximize",
                "foreach",
            )
        )


class NAdam(Optimizer):
    """``torch.optim.NAdam`` on optiquant's transformations.

    >>> import torch, optiquant as oq
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = oq.NAdam([w], lr=0.1)
    >>> w.grad = torch.tensor([2.0])
    >>> opt.step()
    >>> bool(w.data < 1.0)
    True
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        alias.nadam(lr, betas, eps, weight_decay, momentum_decay)
        super().__init__(
            params,
            defaults=dict(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                momentum_decay=momentum_decay,
                decoupled_weight_decay=decoupled_weight_decay,
                maximize=maximize,
                foreach=foreach,
            ),
        )

    def _build(self, group: dict[str, Any]) -> GradientTransformation:
        return alias.nadam(
            **_hyper(
                group,
                "lr",
                "betas",
                "eps",
                "weight_decay",
                "momentum_decay",
                "decoupled_weight_decay",
                "maximize",
                "foreach",
            )
        )


class Adagrad(Optimizer):
    """``torch.optim.Adagrad`` on optiquant's transformations.

    >>> import torch, optiquant as oq
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = oq.Adagrad([w], lr=0.1)
    >>> w.grad = torch.tensor([2.0])
    >>> opt.step()
    >>> w.data
    tensor([0.9000])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        alias.adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps)
        super().__init__(
            params,
            defaults=dict(
                lr=lr,
                lr_decay=lr_decay,
                weight_decay=weight_decay,
                initial_accumulator_value=initial_accumulator_value,
                eps=eps,
                maximize=maximize,
                foreach=foreach,
            ),
        )

    def _build(self, group: dict[str, Any]) -> GradientTransformation:
        return alias.adagrad(
            **_hyper(
                group,
                "lr",
                "lr_decay",
                "weight_decay",
                "initial_accumulator_value",
                "eps",
                "maximize",
                "foreach",
            )
        )


class RMSProp(Optimizer):
    """``torch.optim.RMSprop`` on optiquant's transformations.

    >>> import torch, optiquant as oq
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = oq.RMSProp([w], lr=0.01, alpha=0.0)
    >>> w.grad = torch.tensor([2.0])
    >>> opt.step()
    >>> w.data
    tensor([0.9900])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        alias.rmsprop(lr, alpha, eps, weight_decay, momentum, centered)
        super().__init__(
            params,
            defaults=dict(
                lr=lr,
                alpha=alpha,
                eps=eps,
                weight_decay=weight_decay,
                momentum=momentum,
                centered=centered,
                maximize=maximize,
                foreach=foreach,
            ),
        )

    def _build(self, group: dict[str, Any]) -> GradientTransformation:
        return alias.rmsprop(
            **_hyper(
                group,
                "lr",
                "alpha",
                "eps",
                "weight_decay",
                "momentum",
                "centered",
                "maximize",
                "foreach",
            )
        )


RMSprop = RMSProp


class Lion(Optimizer):
    """Lion (no torch.optim counterpart) as a ``torch.optim.Optimizer``.

    >>> import torch, optiquant as oq
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = oq.Lion([w], lr=0.1)
    >>> w.grad = torch.tensor([2.0])
    >>> opt.step()
    >>> w.data
    tensor([0.9000])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        alias.lion(lr, betas, weight_decay)
        super().__init__(
            params,
            defaults=dict(
                lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize, foreach=foreach
            ),
        )

    def _build(self, group: dict[str, Any]) -> GradientTransformation:
        return alias.lion(**_hyper(group, "lr", "betas", "weight_decay", "maximize", "foreach"))
