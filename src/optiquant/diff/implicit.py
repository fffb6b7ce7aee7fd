"""Implicit differentiation of the solution of an optimality condition (``custom_root``).

If ``theta*(phi)`` solves ``F(theta, phi) = 0``, the implicit function theorem gives
``d theta*/d phi = -A^-1 B`` with ``A = dF/d theta`` and ``B = dF/d phi`` at the solution.
A vector-Jacobian product ``v^T d theta*/d phi`` thus costs one linear solve
``A^T u = v`` followed by ``-B^T u``; neither the solver's iterations nor ``A`` itself are
ever stored.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import optree
import torch
from torch.autograd.function import once_differentiable

from optiquant._typing import TensorTree
from optiquant.diff._flat import flatten_tensors
from optiquant.diff.linear_solve import LinearSolver, solve_normal_cg
from optiquant.tree import tree_flatten, tree_map, tree_unflatten

__all__ = ["custom_root"]

OptimalityFn = Callable[..., TensorTree]


def _normalize_argnums(argnums: int | Sequence[int]) -> tuple[int, ...]:
    items = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not items:
        raise ValueError("argnums: expected at least one argument index")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise TypeError(f"argnums: expected ints, got {item!r}")
        if item == 0:
            raise ValueError(
                "argnums: 0 is the initial guess of the solver and cannot be differentiated; "
                "use indices >= 1 for the arguments that the solution depends on"
            )
        if item < 0:
            raise ValueError(f"argnums: expected indices >= 1, got {item}")
    if len(set(items)) != len(items):
        raise ValueError(f"argnums: duplicate indices in {items}")
    return items


class _RootRule:
    """Everything the backward pass needs, captured at the forward pass."""

    def __init__(
        self,
        optimality_fn: OptimalityFn,
        solve: LinearSolver,
        solution: list[torch.Tensor],
        solution_spec: optree.PyTreeSpec,
        args: list[Any],
        kwargs: dict[str, Any],
        argnums: tuple[int, ...],
    ) -> None:
        self.optimality_fn = optimality_fn
        self.solve = solve
        self.solution = solution
        self.solution_spec = solution_spec
        self.args = args
        self.kwargs = kwargs
        self.argnums = argnums

    def _check_output(self, out: TensorTree) -> None:
        leaves, spec = tree_flatten(out)
        if spec != self.solution_spec:
            raise ValueError(
                "optimality_fn must return a tree with the same structure as the solution "
                f"({self.solution_spec}), got {spec}"
            )
        for index, (leaf, sol) in enumerate(zip(leaves, self.solution)):
            if not isinstance(leaf, torch.Tensor) or leaf.shape != sol.shape:
                got = tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else type(leaf).__name__
                raise ValueError(
                    f"optimality_fn: output leaf {index} must have the shape of the solution "
                    f"leaf {tuple(sol.shape)}, got {got}"
                )

    def backward(self, cotangents: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        spec = self.solution_spec
        solution = tree_unflatten(spec, self.solution)

        def residual_of_solution(theta: TensorTree) -> TensorTree:
            return self.optimality_fn(theta, *self.args, **self.kwargs)

        out, transpose_a = torch.func.vjp(residual_of_solution, solution)[:2]
        self._check_output(out)

        def matvec(u: TensorTree) -> TensorTree:
            return transpose_a(u)[0]

        v = tree_unflatten(spec, list(cotangents))
        u = self.solve(matvec, v)
        u_leaves, u_spec = tree_flatten(u)
        if u_spec != spec:
            raise ValueError(
                f"solve must return a tree with the structure of its right-hand side {spec}, "
                f"got {u_spec}"
            )

        def residual_of_args(*diff_args: TensorTree) -> TensorTree:
            args = list(self.args)
            for index, value in zip(self.argnums, diff_args):
                args[index - 1] = value
            return self.optimality_fn(solution, *args, **self.kwargs)

        primals = tuple(self.args[index - 1] for index in self.argnums)
        transpose_b = torch.func.vjp(residual_of_args, *primals)[1]
        grads = transpose_b(tree_unflatten(spec, u_leaves))
        flat: list[torch.Tensor | None] = []
        for grad in grads:
            flat.extend(None if g is None else -g for g in tree_flatten(grad)[0])
        return flat


class _RootFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, rule: _RootRule, *arg_leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.rule = rule
        return tuple(t.clone() for t in rule.solution)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *cotangents: torch.Tensor) -> tuple[Any, ...]:
        return (None, *ctx.rule.backward(cotangents))


def custom_root(
    optimality_fn: OptimalityFn,
    argnums: int | Sequence[int],
    has_aux: bool = False,
    solve: LinearSolver | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a solver differentiable through its optimality condition.

    Decorates ``solver_fn(init, *args, **kwargs)`` that returns a solution ``theta`` (a tensor
    or a tree of tensors; or ``(theta, aux)`` when ``has_aux``) such that
    ``optimality_fn(theta, *args, **kwargs)`` is zero, a tree with the structure of
    ``theta``. Gradients flow from ``theta`` to the positional arguments listed in
    ``argnums`` (indices into ``solver_fn``'s arguments, so ``>= 1``) by the implicit function
    theorem; the solver's own iterations are not differentiated (it receives detached
    copies of those arguments). ``solve`` is a linear solver from
    :mod:`optiquant.diff.linear_solve` (default :func:`solve_normal_cg`). ``optimality_fn``
    must be composable with :mod:`torch.func` (for example built with :func:`torch.func.grad`).

    >>> import torch
    >>> def stationary(x, a):          # gradient of 0.5 * x**2 - a * x
    ...     return x - a
    >>> @custom_root(stationary, argnums=1)
    ... def argmin(x0, a):
    ...     return a.clone()
    >>> a = torch.tensor(2.0, requires_grad=True)
    >>> torch.autograd.grad(argmin(torch.tensor(0.0), a) ** 2, a)
    (tensor(4.),)
    """
    if not callable(optimality_fn):
        raise TypeError(f"optimality_fn: expected a callable, got {type(optimality_fn).__name__}")
    numbers = _normalize_argnums(argnums)
    if solve is None:
        solve = solve_normal_cg()
    elif not callable(solve):
        raise TypeError(f"solve: expected a linear solver callable, got {type(solve).__name__}")
    linear_solver = solve

    def decorator(solver_fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(solver_fn):
            raise TypeError(f"custom_root must decorate a callable, got {type(solver_fn).__name__}")

        @functools.wraps(solver_fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not args:
                raise TypeError(
                    f"{getattr(solver_fn, '__name__', 'solver_fn')}: expected the initial guess "
                    "as the first positional argument"
                )
            if max(numbers) >= len(args):
                raise ValueError(
                    f"argnums {numbers} refer to positional arguments that were not given "
                    f"({len(args)} positional arguments)"
                )
            arg_leaves: list[torch.Tensor] = []
            call_args = list(args)
            for index in numbers:
                leaves, _ = flatten_tensors(args[index], f"argument {index} (in argnums)")
                arg_leaves.extend(leaves)
                call_args[index] = tree_map(torch.Tensor.detach, args[index])

            result = solver_fn(*call_args, **kwargs)
            if has_aux:
                if not isinstance(result, tuple) or len(result) != 2:
                    raise ValueError(
                        "solver_fn must return (solution, aux) when has_aux=True, got "
                        f"{type(result).__name__}"
                    )
                solution, aux = result
            else:
                solution = result
            leaves, spec = flatten_tensors(solution, "solution returned by solver_fn")
            for index, leaf in enumerate(leaves):
                if not leaf.is_floating_point():
                    raise TypeError(
                        f"solution leaf {index}: expected a floating point tensor, got {leaf.dtype}"
                    )
            detached = [leaf.detach() for leaf in leaves]
            needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in arg_leaves)
            if needs_grad and leaves:
                rule = _RootRule(
                    optimality_fn,
                    linear_solver,
                    detached,
                    spec,
                    call_args[1:],
                    kwargs,
                    numbers,
                )
                outputs = _RootFunction.apply(rule, *arg_leaves)
                solution = tree_unflatten(spec, list(outputs))
            else:
                solution = tree_unflatten(spec, detached)
            return (solution, aux) if has_aux else solution

        return wrapped

    return decorator
