"""Module front-ends for implicit and zero-order differentiation.

* :class:`MetaGradientModule`: an ``nn.Module`` that also holds meta-parameters (tensors
  and modules it depends on but does not own or optimize);
* :class:`ImplicitMetaGradientModule`: its ``solve`` is differentiated implicitly through
  ``optimality`` (or the gradient of ``objective``);
* :class:`ZeroOrderGradientModule`: its ``forward`` gets evolution-strategy gradients;
* :func:`reparametrize`: temporarily compute a module with other tensors.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from optiquant.diff import _slots
from optiquant.diff._zero_order import Method, zero_order
from optiquant.diff.implicit import custom_root
from optiquant.diff.linear_solve import LinearSolver, solve_normal_cg
from optiquant.tree import tree_flatten

__all__ = [
    "ImplicitMetaGradientModule",
    "MetaGradientModule",
    "ZeroOrderGradientModule",
    "reparametrize",
]


def _all_slots(module: nn.Module) -> dict[str, tuple[_slots.Slot, str]]:
    """Every named tensor slot of ``module``: parameters, buffers and meta-parameters."""
    out: dict[str, tuple[_slots.Slot, str]] = {}
    for kind in ("params", "buffers", "meta"):
        for name, slot in _slots.named_slots(module, kind).items():
            out[name] = (slot, kind)
    for prefix, owner in module.named_modules():
        for meta_name, meta_module in owner.__dict__.get("_meta_modules", {}).items():
            base = f"{prefix}.{meta_name}" if prefix else meta_name
            for kind in ("params", "buffers"):
                for name, slot in _slots.named_slots(meta_module, kind).items():
                    out[f"{base}.{name}"] = (slot, kind)
    return out


@contextlib.contextmanager
def reparametrize(
    module: nn.Module, named_tensors: Mapping[str, torch.Tensor], allow_missing: bool = False
) -> Iterator[nn.Module]:
    """Within the block, ``module`` computes with ``named_tensors`` in place of its own.

    Names are dotted names of parameters, buffers or meta-parameters. Unknown names raise
    ``ValueError``; so do missing parameter names unless ``allow_missing``. The original
    tensors are put back on exit.

    >>> import torch
    >>> net = torch.nn.Linear(1, 1, bias=False)
    >>> with reparametrize(net, {"weight": torch.tensor([[3.0]])}):
    ...     net(torch.ones(1, 1))
    tensor([[3.]])
    """
    _slots.check_module(module)
    slots = _all_slots(module)
    unknown = sorted(set(named_tensors) - set(slots))
    if unknown:
        raise ValueError(f"named_tensors: unknown names {unknown} for {type(module).__name__}")
    # A tensor held by several slots (tied weights) is replaced in all of them.
    holders: dict[int, list[tuple[_slots.Slot, str]]] = {}
    for slot, kind in slots.values():
        holders.setdefault(id(_slots.read(slot, kind)), []).append((slot, kind))
    if not allow_missing:
        covered = {id(_slots.read(*slots[name])) for name in named_tensors}
        missing = sorted(
            name
            for name, (slot, kind) in slots.items()
            if kind == "params" and id(_slots.read(slot, kind)) not in covered
        )
        if missing:
            raise ValueError(f"named_tensors: missing parameters {missing} (allow_missing=False)")
    plan: dict[tuple[int, str, str], tuple[_slots.Slot, str, torch.Tensor]] = {}
    for name, value in named_tensors.items():
        slot, kind = slots[name]
        for held_slot, held_kind in holders[id(_slots.read(slot, kind))]:
            plan[(id(held_slot[0]), held_slot[1], held_kind)] = (held_slot, held_kind, value)
        plan[(id(slot[0]), slot[1], kind)] = (slot, kind, value)
    saved = [(slot, kind, _slots.read(slot, kind)) for slot, kind, _ in plan.values()]
    try:
        for slot, kind, value in plan.values():
            _slots.write(slot, kind, value)
        yield module
    finally:
        for slot, kind, value in reversed(saved):
            _slots.write(slot, kind, value)


def _tree_ids(values: Any) -> set[int]:
    ids = set()
    for leaf in tree_flatten(values)[0]:
        if isinstance(leaf, nn.Module) or (isinstance(leaf, torch.Tensor) and leaf.requires_grad):
            ids.add(id(leaf))
    return ids


class MetaGradientModule(nn.Module):
    """An ``nn.Module`` that keeps meta-parameters apart from its own parameters.

    Meta-parameters are what the module depends on but does not optimize: tensors that
    require grad or modules given to the constructor, plain (non-``nn.Parameter``) tensors
    that require grad assigned as attributes, and anything registered with
    :meth:`register_meta_parameter` / :meth:`register_meta_module`. They are not in
    :meth:`parameters`; :meth:`named_meta_parameters` lists them.

    >>> import torch
    >>> class Inner(MetaGradientModule):
    ...     def __init__(self, prior):
    ...         super().__init__()
    ...         self.prior = prior
    ...         self.weight = torch.nn.Parameter(prior.detach().clone())
    >>> inner = Inner(torch.zeros(2, requires_grad=True))
    >>> [n for n, _ in inner.named_parameters()], [n for n, _ in inner.named_meta_parameters()]
    (['weight'], ['prior'])
    """

    _meta_parameters: dict[str, torch.Tensor | None]
    _meta_modules: dict[str, nn.Module]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own_init = cls.__dict__.get("__init__")
        if own_init is None:
            return

        @functools.wraps(own_init)
        def __init__(self: MetaGradientModule, *args: Any, **kw: Any) -> None:
            stack = self.__dict__.setdefault("_meta_candidate_stack", [])
            stack.append(_tree_ids((args, kw)))
            try:
                own_init(self, *args, **kw)
            finally:
                stack.pop()

        cls.__init__ = __init__  # type: ignore[method-assign]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__.setdefault("_meta_parameters", {})
        self.__dict__.setdefault("_meta_modules", {})

    def _is_candidate(self, value: Any) -> bool:
        return any(id(value) in ids for ids in self.__dict__.get("_meta_candidate_stack", []))

    def __setattr__(self, name: str, value: Any) -> None:
        meta_params = self.__dict__.get("_meta_parameters")
        if meta_params is None:
            super().__setattr__(name, value)
            return
        if isinstance(value, torch.Tensor) and (
            name in meta_params
            or self._is_candidate(value)
            or (not isinstance(value, nn.Parameter) and value.requires_grad)
        ):
            self.register_meta_parameter(name, value)
        elif isinstance(value, nn.Module) and (
            name in self._meta_modules or self._is_candidate(value)
        ):
            self.register_meta_module(name, value)
        else:
            super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        for store in ("_meta_parameters", "_meta_modules"):
            values = self.__dict__.get(store)
            if values is not None and name in values:
                return values[name]
        return super().__getattr__(name)

    def __delattr__(self, name: str) -> None:
        for store in ("_meta_parameters", "_meta_modules"):
            values = self.__dict__.get(store)
            if values is not None and name in values:
                del values[name]
                return
        super().__delattr__(name)

    def _check_free(self, name: str) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(
                f"name: expected a non-empty attribute name without dots, got {name!r}"
            )
        if name in self._parameters or name in self._buffers or name in self._modules:
            raise ValueError(f"name: {name!r} is already a parameter, buffer or submodule")

    def register_meta_parameter(self, name: str, tensor: torch.Tensor | None) -> None:
        """Register ``tensor`` as a meta-parameter named ``name``."""
        self._check_free(name)
        if tensor is not None and not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor: expected a tensor or None, got {type(tensor).__name__}")
        self.__dict__.pop(name, None)
        self._meta_parameters[name] = tensor

    def register_meta_module(self, name: str, module: nn.Module) -> None:
        """Register ``module`` as a meta-module: its parameters are meta-parameters."""
        self._check_free(name)
        _slots.check_module(module)
        self.__dict__.pop(name, None)
        self._meta_modules[name] = module

    def named_meta_parameters(self, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` for each distinct meta-parameter, including meta-modules'."""
        seen: set[int] = set()
        for name, (slot, kind) in _all_slots(self).items():
            if kind == "meta" or (kind == "params" and self._in_meta_module(name)):
                tensor = _slots.read(slot, kind)
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    yield (f"{prefix}.{name}" if prefix else name), tensor

    def _in_meta_module(self, name: str) -> bool:
        head = name.split(".", 1)[0]
        return head in self._meta_modules

    def meta_parameters(self) -> Iterator[torch.Tensor]:
        """The meta-parameters (see :meth:`named_meta_parameters`)."""
        for _, tensor in self.named_meta_parameters():
            yield tensor


def _check_scalar(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must return a scalar tensor, got {got}")
    return value.reshape(())


def _as_named(out: Any, names: list[str], what: str) -> dict[str, torch.Tensor]:
    if isinstance(out, Mapping):
        if sorted(out) != sorted(names):
            raise ValueError(
                f"{what} must return one entry per parameter {names}, got {sorted(out)}"
            )
        return {name: out[name] for name in names}
    if isinstance(out, torch.Tensor):
        out = (out,)
    if not isinstance(out, (tuple, list)) or len(out) != len(names):
        got = len(out) if isinstance(out, (tuple, list)) else type(out).__name__
        raise ValueError(
            f"{what} must return a tuple with one tensor per parameter ({len(names)}: {names}), "
            f"got {got}"
        )
    return dict(zip(names, out))


class ImplicitMetaGradientModule(MetaGradientModule):
    """A module whose ``solve`` is differentiated implicitly with respect to its meta-parameters.

    Subclasses define ``solve(*inputs)`` that optimizes the module's own parameters in
    place (with any optimizer; it sees detached meta-parameters) and usually returns
    ``self``, and either ``optimality(*inputs)`` (one tensor per parameter, in the order of
    :meth:`parameters`, or a dict by name; zero at the solution) or ``objective(*inputs)``
    (a scalar whose gradient is the optimality condition). After ``solve`` the module's
    parameters are differentiable functions of the meta-parameters. The linear solver is
    chosen with the class keyword ``linear_solve`` (default :func:`solve_normal_cg`).

    >>> import torch
    >>> from optiquant.diff.linear_solve import solve_cg
    >>> class Shrink(ImplicitMetaGradientModule, linear_solve=solve_cg(rtol=1e-10)):
    ...     def __init__(self, lam):
    ...         super().__init__()
    ...         self.lam = lam
    ...         self.w = torch.nn.Parameter(torch.zeros(()))
    ...     def objective(self, y):            # 0.5 (w - y)^2 + 0.5 lam w^2
    ...         return 0.5 * (self.w - y) ** 2 + 0.5 * self.lam * self.w**2
    ...     def solve(self, y):
    ...         with torch.no_grad():
    ...             self.w.copy_(y / (1 + self.lam))
    ...         return self
    >>> lam = torch.tensor(1.0, requires_grad=True)
    >>> model = Shrink(lam).solve(torch.tensor(4.0))
    >>> torch.autograd.grad(model.w, lam)         # d(y / (1 + lam)) / d lam = -1
    (tensor(-1.),)
    """

    _linear_solve: LinearSolver

    def __init_subclass__(cls, linear_solve: LinearSolver | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if linear_solve is not None:
            if not callable(linear_solve):
                raise TypeError(
                    f"linear_solve: expected a linear solver, got {type(linear_solve).__name__}"
                )
            cls._linear_solve = staticmethod(linear_solve)  # type: ignore[assignment]
        own_solve = cls.__dict__.get("solve")
        if own_solve is None:
            return
        base = ImplicitMetaGradientModule
        if cls.optimality is base.optimality and cls.objective is base.objective:
            raise TypeError(f"{cls.__name__} must define optimality() or objective()")
        cls.solve = _implicit_solve(own_solve)  # type: ignore[method-assign]

    def solve(self, *inputs: Any, **kwargs: Any) -> Any:
        """Optimize the module's parameters in place (defined by subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} must define solve()")

    def objective(self, *inputs: Any, **kwargs: Any) -> torch.Tensor:
        """The inner objective whose stationary point ``solve`` finds (optional)."""
        raise NotImplementedError(f"{type(self).__name__} must define objective() or optimality()")

    def optimality(self, *inputs: Any, **kwargs: Any) -> Any:
        """The optimality condition, zero at the solution; defaults to the objective's gradient."""
        names = [name for name, _ in _unique_named_parameters(self)]
        current = {name: tensor for name, tensor in _unique_named_parameters(self)}

        def objective(params: dict[str, torch.Tensor]) -> torch.Tensor:
            with reparametrize(self, params, allow_missing=True):
                return _check_scalar(self.objective(*inputs, **kwargs), "objective")

        grads = torch.func.grad(objective)(current)
        return tuple(grads[name] for name in names)


ImplicitMetaGradientModule._linear_solve = staticmethod(solve_normal_cg())  # type: ignore[assignment]


def _unique_named_parameters(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    seen: set[int] = set()
    out = []
    for name, slot in _slots.named_slots(module, "params").items():
        tensor = _slots.read(slot, "params")
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out.append((name, tensor))
    return out


def _implicit_solve(user_solve: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(user_solve)
    def solve(self: ImplicitMetaGradientModule, *inputs: Any, **kwargs: Any) -> Any:
        # Start from leaves so that the user's optimizer can update them in place.
        memo: dict[int, nn.Parameter] = {}
        for slot in _slots.named_slots(self, "params").values():
            value = _slots.read(slot, "params")
            if not value.is_leaf:
                fresh = memo.setdefault(
                    id(value), nn.Parameter(value.detach().clone(), value.requires_grad)
                )
                _slots.write(slot, "params", fresh)
        inner = _unique_named_parameters(self)
        names = [name for name, _ in inner]
        meta = dict(self.named_meta_parameters())

        def run(
            init: dict[str, torch.Tensor], meta_values: dict[str, torch.Tensor], *a: Any, **kw: Any
        ) -> Any:
            del init
            with reparametrize(self, meta_values, allow_missing=True):
                result = user_solve(self, *a, **kw)
            solution = {
                name: tensor.detach().clone() for name, tensor in _unique_named_parameters(self)
            }
            return solution, result

        def optimality(
            solution: dict[str, torch.Tensor],
            meta_values: dict[str, torch.Tensor],
            *a: Any,
            **kw: Any,
        ) -> dict[str, torch.Tensor]:
            with reparametrize(self, {**solution, **meta_values}, allow_missing=True):
                out = self.optimality(*a, **kw)
            return _as_named(out, names, f"{type(self).__name__}.optimality")

        wrapped = custom_root(optimality, argnums=1, has_aux=True, solve=type(self)._linear_solve)(
            run
        )
        init = {name: tensor.detach() for name, tensor in inner}
        solution, result = wrapped(init, meta, *inputs, **kwargs)
        owner_of = {id(tensor): name for name, tensor in _unique_named_parameters(self)}
        for slot in _slots.named_slots(self, "params").values():
            name = owner_of[id(_slots.read(slot, "params"))]
            _slots.write(slot, "params", solution[name])
        return result

    return solve


class ZeroOrderGradientModule(nn.Module):
    """A module whose ``forward`` (a scalar) gets zero-order gradients for its parameters.

    Subclasses define ``forward(*inputs)`` returning a scalar tensor and
    ``sample(sample_shape)`` returning noise of that shape (zero mean, unit variance).
    The estimator is configured by class keywords ``method``, ``num_samples`` and
    ``sigma``, as in :func:`~optiquant.diff.zero_order`.

    >>> import torch
    >>> class Cost(ZeroOrderGradientModule, method="antithetic", num_samples=1):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.x = torch.nn.Parameter(torch.tensor([1.0]))
    ...     def forward(self, c):
    ...         return (c * self.x).sum()
    ...     def sample(self, sample_shape):     # random signs
    ...         return torch.randint(0, 2, sample_shape) * 2.0 - 1.0
    >>> model = Cost()
    >>> model(torch.tensor(2.0)).backward()
    >>> model.x.grad
    tensor([2.])
    """

    _zo_method: Method = "naive"
    _zo_num_samples: int = 1
    _zo_sigma: float = 1.0

    def __init_subclass__(
        cls,
        method: Method | None = None,
        num_samples: int | None = None,
        sigma: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if method is not None:
            cls._zo_method = method
        if num_samples is not None:
            cls._zo_num_samples = num_samples
        if sigma is not None:
            cls._zo_sigma = sigma
        # Validate the options now rather than at the first forward.
        zero_order(
            lambda shape: torch.zeros(shape), cls._zo_method, 0, cls._zo_num_samples, cls._zo_sigma
        )
        own_forward = cls.__dict__.get("forward")
        if own_forward is not None:
            cls.forward = _zero_order_forward(own_forward)  # type: ignore[method-assign]

    def sample(self, sample_shape: torch.Size) -> torch.Tensor:
        """Noise of shape ``sample_shape`` (defined by subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} must define sample(sample_shape)")


def _zero_order_forward(user_forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(user_forward)
    def forward(self: ZeroOrderGradientModule, *inputs: Any, **kwargs: Any) -> torch.Tensor:
        named = _unique_named_parameters(self)
        names = [name for name, _ in named]

        def call(params: tuple[torch.Tensor, ...], *a: Any, **kw: Any) -> torch.Tensor:
            with reparametrize(self, dict(zip(names, params)), allow_missing=True):
                return user_forward(self, *a, **kw)

        estimate = zero_order(
            self.sample, self._zo_method, 0, self._zo_num_samples, self._zo_sigma
        )(call)
        return estimate(tuple(tensor for _, tensor in named), *inputs, **kwargs)

    return forward
