"""Loss, gradients and a Hessian-vector product in one call, for Hessian-fitted PSGD."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.func

from optiquant.psgd._common import check_number, resolve_value
from optiquant.tree import tree_flatten, tree_map, tree_unflatten

__all__ = ["hessian_helper", "hvp"]


@functools.cache
def _load_forward_ad_support() -> None:
    # torch builds its forward-mode decompositions with torch.jit.script on first use,
    # which warns that torch.jit.script is deprecated; nothing a caller can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.script.*", category=DeprecationWarning
        )
        import torch._decomp.decompositions_for_jvp  # noqa: F401


def _random_like(params: Any, generator: torch.Generator) -> Any:
    def draw(p: torch.Tensor) -> torch.Tensor:
        v = torch.randn(p.shape, generator=generator, dtype=p.dtype, device=generator.device)
        return v.to(p.device)

    return tree_map(draw, params)


def _grad_fn(loss_fn: Callable[..., Any], extra: tuple[Any, ...], has_aux: bool):
    """``params -> (grads, loss_out)`` where ``loss_out`` is what ``loss_fn`` returned."""

    def loss_and_out(p: Any) -> tuple[torch.Tensor, Any]:
        out = loss_fn(p, *extra)
        if has_aux:
            if not isinstance(out, tuple) or len(out) != 2:
                raise TypeError("loss_fn: with has_aux=True it must return (loss, aux)")
            return out[0], (out[0], out[1])
        return out, out

    return torch.func.grad(loss_and_out, has_aux=True)


def hvp(
    loss_fn: Callable[..., Any],
    params: Any,
    vector: Any,
    loss_fn_extra_args: tuple[Any, ...] = (),
    *,
    has_aux: bool = False,
    finite_difference: bool = False,
) -> tuple[Any, Any, Any]:
    """``(loss_out, grads, H @ vector)`` at ``params``.

    Exact by forward-over-reverse differentiation (``torch.func.jvp`` of the gradient)
    unless ``finite_difference=True``, which uses ``(g(p + e v) - g(p)) / e`` with
    ``e = sqrt(eps) * (1 + |p|) / |v|`` (for losses without forward-mode support).

    >>> import torch
    >>> loss = lambda p: (p["x"] ** 3).sum()
    >>> _, g, hv = hvp(loss, {"x": torch.tensor([1.0, 2.0])}, {"x": torch.tensor([1.0, 1.0])})
    >>> g["x"], hv["x"]
    (tensor([ 3., 12.]), tensor([ 6., 12.]))
    """
    grad_fn = _grad_fn(loss_fn, tuple(loss_fn_extra_args), has_aux)
    if not finite_difference:
        _load_forward_ad_support()

        grads, hv, loss_out = torch.func.jvp(grad_fn, (params,), (vector,), has_aux=True)  # type: ignore[misc]
    else:
        grads, loss_out = grad_fn(params)
        p_leaves, spec = tree_flatten(params)
        v_leaves, _ = tree_flatten(vector)
        pairs = [(p, v) for p, v in zip(p_leaves, v_leaves) if p is not None]
        dtype = pairs[0][0].dtype
        p_norm = sum(float((p.detach().double() ** 2).sum()) for p, _ in pairs) ** 0.5
        v_norm = sum(float((v.double() ** 2).sum()) for _, v in pairs) ** 0.5
        eps = float(torch.finfo(dtype).eps) ** 0.5 * (1.0 + p_norm) / max(v_norm, 1e-30)
        shifted = tree_unflatten(
            spec, [None if p is None else p.detach() + eps * v for p, v in zip(p_leaves, v_leaves)]
        )
        grads_2, _ = grad_fn(shifted)
        hv = tree_map(lambda a, b: (b - a) / eps, grads, grads_2)
    return loss_out, grads, hv


def hessian_helper(
    generator: torch.Generator,
    step: int | torch.Tensor,
    loss_fn: Callable[..., Any],
    params: Any,
    loss_fn_extra_args: tuple[Any, ...] = (),
    has_aux: bool = False,
    preconditioner_update_probability: float | Callable[[int], Any] = 1.0,
    *,
    finite_difference: bool = False,
) -> tuple[Any, Any, Any, Any, bool]:
    """Replace ``value_and_grad`` for Hessian-fitted PSGD.

    Returns ``(loss_out, grads, hvp, vector, update_preconditioner)``. On steps where
    the preconditioner updates (always for ``step < 2``, else with probability
    ``preconditioner_update_probability``, a float or a schedule of ``step``), ``vector``
    is drawn from ``N(0, I)`` with ``generator`` and ``hvp`` is the Hessian times it;
    otherwise both are ``None`` and only loss and gradients are computed. Pass the
    last three to the optimizer as ``Hvp=``, ``vector=``, ``update_preconditioner=``.
    Seed ``generator`` identically on every process to make identical decisions.
    ``loss_fn(params, *loss_fn_extra_args)`` returns the loss, or ``(loss, aux)`` when
    ``has_aux``; ``loss_out`` is that return value.

    >>> import torch
    >>> from optiquant.psgd import hessian_helper
    >>> gen = torch.Generator().manual_seed(0)
    >>> loss, g, hv, v, upd = hessian_helper(gen, 0, lambda p: (p ** 2).sum(), torch.ones(3))
    >>> upd, bool(torch.allclose(hv, 2 * v))
    (True, True)
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    check_number("step", step, low=0)
    check_number(
        "preconditioner_update_probability",
        preconditioner_update_probability,
        low=0.0,
        high=1.0,
        allow_callable=True,
    )
    step_i = int(step)
    p = resolve_value(
        "preconditioner_update_probability", preconditioner_update_probability, step_i
    )
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"preconditioner_update_probability: expected a value in [0, 1], got {p}")
    draw = float(torch.rand((), generator=generator, device=generator.device))
    update = step_i < 2 or draw < p
    if not update:
        grads, loss_out = _grad_fn(loss_fn, tuple(loss_fn_extra_args), has_aux)(params)
        return loss_out, grads, None, None, False
    vector = _random_like(params, generator)
    loss_out, grads, hv = hvp(
        loss_fn,
        params,
        vector,
        loss_fn_extra_args,
        has_aux=has_aux,
        finite_difference=finite_difference,
    )
    return loss_out, grads, hv, vector, True
