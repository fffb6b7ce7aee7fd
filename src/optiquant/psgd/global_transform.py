"""``scale_by_xmat`` and ``scale_by_lra``: one PSGD preconditioner over all parameters.

The parameters are viewed as a single flat vector (leaf order of the tree). A leaf whose
gradient is ``None`` counts as a zero gradient for the preconditioner and its update
stays ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from optiquant._typing import OptState, Params, Updates
from optiquant.optim.base import GradientTransformation
from optiquant.psgd import kron_math, lra_math, xmat_math
from optiquant.psgd._common import (
    check_choice,
    check_dtype,
    check_number,
    compute_dtype,
    cpu_scalar,
    generator_for,
    resolve_value,
    step_seed,
)
from optiquant.psgd._step import DAMPING, clip_global_norm, decide_fit, flatten_like, momentum
from optiquant.tree import tree_flatten, tree_unflatten

__all__ = ["ScaleByLRAState", "ScaleByXMatState", "scale_by_lra", "scale_by_xmat"]

_NORMALIZERS = ("1st", "2nd")
_DIAG_NORMALIZERS = ("global", "entrywise")


class ScaleByXMatState(NamedTuple):
    """State of :func:`scale_by_xmat`: CPU counters and seed (see ``ScaleByKronState``),
    momentum mirroring the params, and the flat ``a`` (diagonal) and ``b`` (anti-diagonal)."""

    count: torch.Tensor  # type: ignore[assignment]
    update_acc: torch.Tensor
    scale_set: torch.Tensor
    seed: torch.Tensor
    mu: Any
    a: torch.Tensor
    b: torch.Tensor


class ScaleByLRAState(NamedTuple):
    """State of :func:`scale_by_lra`: as :class:`ScaleByXMatState`, plus ``fit_count`` (refits
    so far; ``U`` and ``V`` take turns) and ``U``, ``V``, ``d`` of ``Q = (I + U V^T) diag(d)``."""

    count: torch.Tensor  # type: ignore[assignment]
    update_acc: torch.Tensor
    scale_set: torch.Tensor
    seed: torch.Tensor
    fit_count: torch.Tensor
    mu: Any
    U: torch.Tensor
    V: torch.Tensor
    d: torch.Tensor


def _check_common(
    b1,
    probability,
    precond_lr,
    precond_init_scale,
    update_global_norm_clip,
    step_normalizer_order,
    seed,
    mu_dtype,
    nesterov,
) -> None:
    check_number("b1", b1, low=0.0, high=1.0, high_open=True)
    check_number(
        "preconditioner_update_probability", probability, low=0.0, high=1.0, allow_callable=True
    )
    check_number("precond_lr", precond_lr, low=0.0, low_open=True, allow_callable=True)
    check_number("precond_init_scale", precond_init_scale, low=0.0, low_open=True, allow_none=True)
    check_number(
        "update_global_norm_clip", update_global_norm_clip, low=0.0, low_open=True, allow_none=True
    )
    check_choice("step_normalizer_order", step_normalizer_order, _NORMALIZERS)
    check_number("seed", seed, low=0, integer=True)
    check_dtype("mu_dtype", mu_dtype)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov: expected a bool, got {type(nesterov).__name__}")


def _layout(params: Params) -> tuple[list[Any], Any, torch.dtype, torch.device, int]:
    leaves, spec = tree_flatten(params)
    present = []
    for index, p in enumerate(leaves):
        if p is None:
            continue
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            raise TypeError(f"params: leaf {index} must be a floating-point tensor, got {p!r:.60}")
        present.append(p)
    if not present:
        raise ValueError("params: expected at least one tensor")
    devices = {p.device for p in present}
    if len(devices) > 1:
        raise ValueError(
            f"params: a global preconditioner needs all params on one device, got {devices}"
        )
    dtype = compute_dtype(present[0].dtype)
    for p in present[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    n = sum(p.numel() for p in present)
    if n == 0:
        raise ValueError("params: all tensors are empty")
    return leaves, spec, dtype, present[0].device, n


def _global(
    kind: str,
    b1: float,
    preconditioner_update_probability: float | Callable[[int], Any],
    nesterov: bool,
    precond_lr: float | Callable[[int], Any],
    precond_init_scale: float | None,
    update_global_norm_clip: float | None,
    step_normalizer_order: str,
    seed: int,
    mu_dtype: torch.dtype | None,
    rank: int,
    diag_step_normalizer: str = "global",
) -> GradientTransformation:
    _check_common(
        b1,
        preconditioner_update_probability,
        precond_lr,
        precond_init_scale,
        update_global_norm_clip,
        step_normalizer_order,
        seed,
        mu_dtype,
        nesterov,
    )
    init_scale = 1.0 if precond_init_scale is None else precond_init_scale

    def init(params: Params) -> OptState:
        leaves, spec, dtype, device, n = _layout(params)
        mu = tree_unflatten(
            spec,
            [
                None
                if p is None or b1 == 0
                else torch.zeros_like(
                    p, dtype=mu_dtype or p.dtype, memory_format=torch.contiguous_format
                )
                for p in leaves
            ],
        )
        head = dict(
            count=cpu_scalar(0),
            update_acc=cpu_scalar(0),
            scale_set=cpu_scalar(False, torch.bool),
            seed=cpu_scalar(seed),
        )
        if kind == "xmat":
            a, b = xmat_math.init(n, init_scale, dtype=dtype, device=device)
            return ScaleByXMatState(**head, mu=mu, a=a, b=b)
        gen = generator_for(torch.device("cpu"), step_seed(seed, 0, stream=1))
        u, v, d = lra_math.init(
            n, min(rank, n), init_scale, generator=gen, dtype=dtype, device=device
        )
        return ScaleByLRAState(**head, fit_count=cpu_scalar(0), mu=mu, U=u, V=v, d=d)

    state_type = ScaleByXMatState if kind == "xmat" else ScaleByLRAState

    def update(
        updates: Updates,
        state: Any,
        params: Params | None = None,
        *,
        inplace: bool = True,
        Hvp: Any = None,
        vector: Any = None,
        update_preconditioner: Any = None,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        del extra_args
        state_ok = isinstance(state, state_type)
        if not state_ok:
            raise TypeError(f"state: expected a {state_type.__name__}, got {type(state).__name__}")
        g_leaves, spec = tree_flatten(updates)
        mu_leaves = flatten_like(spec, state.mu, "state.mu")
        p_leaves = (
            flatten_like(spec, params, "params") if params is not None else [None] * len(g_leaves)
        )
        old = int(state.count)
        dec = decide_fit(
            old,
            int(state.update_acc),
            preconditioner_update_probability,
            update_preconditioner,
            Hvp,
            vector,
        )
        flat_ref = state.a if kind == "xmat" else state.d
        ct, device = flat_ref.dtype, flat_ref.device

        # shapes of every leaf, also those without a gradient
        shapes: list[torch.Size | None] = []
        for _index, (g, m, p) in enumerate(zip(g_leaves, mu_leaves, p_leaves)):
            ref = g if g is not None else (m if m is not None else p)
            if ref is None and g is None and (m is None and p is None):
                shapes.append(None)
                continue
            shapes.append(ref.shape)
        n = sum(s.numel() for s in shapes if s is not None)
        if n != flat_ref.shape[0]:
            raise ValueError(
                f"updates: {n} entries (leaves without a gradient need params= or momentum to "
                f"be sized), but the preconditioner has {flat_ref.shape[0]}"
            )

        def flat(tree_leaves: list[Any]) -> torch.Tensor:
            parts = []
            for t, s in zip(tree_leaves, shapes):
                if s is None:
                    continue
                parts.append(
                    torch.zeros(s.numel(), dtype=ct, device=device)
                    if t is None
                    else t.reshape(-1).to(ct)
                )
            return torch.cat(parts)

        new_mu: list[Any] = []
        dirs: list[Any] = []
        for g, m in zip(g_leaves, mu_leaves):
            if g is None:
                new_mu.append(m)
                dirs.append(None)
                continue
            m_new, mhat = momentum(
                g, m, b1, dec.count, nesterov=nesterov, inplace=inplace, dtype=ct
            )
            new_mu.append(m_new)
            dirs.append(mhat)

        fields: dict[str, Any] = {}
        if dec.fit:
            if dec.newton:
                h = flat(flatten_like(spec, Hvp, "Hvp"))
                v = flat(flatten_like(spec, vector, "vector"))
            else:
                gen = generator_for(device, step_seed(int(state.seed), dec.count))
                v = torch.randn(n, generator=gen, dtype=ct, device=device)
                g_flat = flat(g_leaves)
                h = g_flat + (DAMPING * g_flat.abs().mean()) * v
            lr_q = resolve_value("precond_lr", precond_lr, old)
            set_scale = precond_init_scale is None and not bool(state.scale_set)
            scale = (
                kron_math.auto_init_scale(h[None], v[None] if dec.newton else None)[0]
                if set_scale
                else None
            )
            if kind == "xmat":
                a, b = state.a, state.b
                if scale is not None:
                    a, b = xmat_math.init(n, scale.to(ct), dtype=ct, device=device)
                a, b = xmat_math.update(a, b, v, h, lr=lr_q, step_normalizer=step_normalizer_order)
                fields = {"a": a, "b": b}
            else:
                u, vv, d = state.U, state.V, state.d
                if scale is not None:
                    d = torch.full_like(d, float(scale))
                fits = int(state.fit_count)
                u, vv, d = lra_math.update(
                    u,
                    vv,
                    d,
                    v,
                    h,
                    lr=lr_q,
                    update_u=fits % 2 == 0,
                    step_normalizer=step_normalizer_order,
                    diag_normalizer=diag_step_normalizer,
                )
                u, vv = lra_math.balance(u, vv)
                fields = {"U": u, "V": vv, "d": d, "fit_count": cpu_scalar(fits + 1)}
            if inplace:
                for key, value in fields.items():
                    if key != "fit_count":
                        getattr(state, key).copy_(value)
                        fields[key] = getattr(state, key)
            fields["scale_set"] = cpu_scalar(bool(state.scale_set) or set_scale, torch.bool)

        # precondition all directions at once
        live = [i for i, d_ in enumerate(dirs) if d_ is not None]
        out: list[Any] = [None] * len(g_leaves)
        if live:
            full = flat([dirs[i] if dirs[i] is not None else None for i in range(len(dirs))])
            if kind == "xmat":
                a = fields.get("a", state.a)
                b = fields.get("b", state.b)
                pre = xmat_math.precondition(a, b, full)
            else:
                pre = lra_math.precondition(
                    fields.get("U", state.U),
                    fields.get("V", state.V),
                    fields.get("d", state.d),
                    full,
                )
            pieces = []
            offset = 0
            for i, s in enumerate(shapes):
                if s is None:
                    continue
                size = s.numel()
                if dirs[i] is not None:
                    pieces.append((i, pre[offset : offset + size].reshape(s)))
                offset += size
            clipped = clip_global_norm([p for _, p in pieces], update_global_norm_clip)
            for (i, _), c in zip(pieces, clipped):
                out[i] = c.to(g_leaves[i].dtype)
        new_state = state._replace(
            count=cpu_scalar(dec.count),
            update_acc=cpu_scalar(dec.acc),
            mu=tree_unflatten(spec, new_mu),
            **fields,
        )
        return tree_unflatten(spec, out), new_state

    return GradientTransformation(init, update)


def scale_by_xmat(
    b1: float = 0.9,
    preconditioner_update_probability: float | Callable[[int], Any] = 1.0,
    nesterov: bool = False,
    precond_lr: float | Callable[[int], Any] = 0.1,
    precond_init_scale: float | None = None,
    update_global_norm_clip: float | None = None,
    step_normalizer_order: str = "2nd",
    seed: int = 0,
    mu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """Precondition with one X-shaped PSGD preconditioner over all params (no learning rate).

    Fits by whitening, or to the Hessian when ``update`` receives ``Hvp=``, ``vector=``
    and ``update_preconditioner=`` (see :func:`~optiquant.psgd.hessian_helper`).
    ``precond_init_scale=None`` sets the initial scale from the first fitting pair.

    >>> import torch
    >>> tx = scale_by_xmat(b1=0.0)
    >>> state = tx.init(torch.zeros(4))
    >>> v = torch.randn(4)
    >>> upd, state = tx.update(torch.ones(4), state, Hvp=2 * v, vector=v,
    ...                        update_preconditioner=True)
    >>> upd   # P = H^-1 = I/2 right away, from the automatic initial scale
    tensor([0.5000, 0.5000, 0.5000, 0.5000])
    """
    return _global(
        "xmat",
        b1,
        preconditioner_update_probability,
        nesterov,
        precond_lr,
        precond_init_scale,
        update_global_norm_clip,
        step_normalizer_order,
        seed,
        mu_dtype,
        0,
    )


def scale_by_lra(
    b1: float = 0.9,
    preconditioner_update_probability: float | Callable[[int], Any] = 1.0,
    nesterov: bool = False,
    uvd_rank_of_approximation: int = 10,
    precond_lr: float | Callable[[int], Any] = 0.1,
    precond_init_scale: float | None = None,
    update_global_norm_clip: float | None = None,
    step_normalizer_order: str = "2nd",
    seed: int = 0,
    mu_dtype: torch.dtype | None = None,
    diag_step_normalizer: str = "global",
) -> GradientTransformation:
    """Precondition with one low-rank PSGD preconditioner ``Q = (I + U V^T) diag(d)`` over all
    params, ``U, V`` of rank ``uvd_rank_of_approximation`` (no learning rate).

    ``diag_step_normalizer="entrywise"`` gives each entry of ``d`` its own normalised
    fitting step (``"global"``, the default, shares the step of the largest entry); see
    :func:`optiquant.psgd.lra_math.update`. It pays off when the diagonal of the target
    is badly scaled, e.g. Hessian fitting on an ill-conditioned diagonal-plus-low-rank
    curvature.

    >>> import torch
    >>> tx = scale_by_lra(b1=0.0, uvd_rank_of_approximation=2)
    >>> state = tx.init(torch.zeros(5))
    >>> state.U.shape, state.d.shape
    (torch.Size([5, 2]), torch.Size([5]))
    """
    check_number("uvd_rank_of_approximation", uvd_rank_of_approximation, low=1, integer=True)
    check_choice("diag_step_normalizer", diag_step_normalizer, _DIAG_NORMALIZERS)
    return _global(
        "lra",
        b1,
        preconditioner_update_probability,
        nesterov,
        precond_lr,
        precond_init_scale,
        update_global_norm_clip,
        step_normalizer_order,
        seed,
        mu_dtype,
        uvd_rank_of_approximation,
        diag_step_normalizer,
    )
