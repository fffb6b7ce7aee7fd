"""``scale_by_affine``: a left and a right PSGD factor per parameter viewed as a matrix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from optiquant._typing import OptState, Params, Updates
from optiquant.optim.base import GradientTransformation
from optiquant.psgd import affine_math, kron_math
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
from optiquant.psgd._step import (
    DAMPING,
    check_param_leaf,
    clip_global_norm,
    decide_fit,
    flatten_like,
    initial_state,
    momentum,
    momentum_buffer,
    state_leaves,
)
from optiquant.tree import tree_flatten, tree_unflatten

__all__ = ["ScaleByAffineState", "scale_by_affine"]


class ScaleByAffineState(NamedTuple):
    """State of :func:`scale_by_affine`: CPU counters and seed, momentum and a
    ``(Q_left, Q_right)`` pair (each ``(d, d)`` triangular or ``(d,)`` diagonal) per param."""

    count: torch.Tensor  # type: ignore[assignment]
    update_acc: torch.Tensor
    scale_set: torch.Tensor
    seed: torch.Tensor
    mu: Any
    Qs: Any


def scale_by_affine(
    b1: float = 0.9,
    preconditioner_update_probability: float | Callable[[int], Any] = 1.0,
    nesterov: bool = False,
    max_size_triangular: int = 4096,
    max_skew_triangular: float = 128,
    precond_lr: float | Callable[[int], Any] = 0.1,
    precond_init_scale: float | None = None,
    update_global_norm_clip: float | None = None,
    step_normalizer_order: str = "2nd",
    seed: int = 0,
    mu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """Precondition each param ``G`` (as a matrix) by ``Q_l^T Q_l G Q_r^T Q_r`` (no learning rate).

    The matrix view and factor types follow :mod:`optiquant.psgd.affine_math`. Fits by
    whitening, or to the Hessian when ``update`` receives ``Hvp=``, ``vector=`` and
    ``update_preconditioner=``. ``precond_init_scale=None`` sets each tensor's initial
    scale from its first fitting pair (zero or non-finite estimates fall back to 1).

    >>> import torch
    >>> tx = scale_by_affine()
    >>> state = tx.init([torch.zeros(3, 4), torch.zeros(300)])
    >>> [tuple(f.shape) for f in state.Qs[0]], [tuple(f.shape) for f in state.Qs[1]]
    ([(3, 3), (4, 4)], [(1,), (300,)])
    """
    check_number("b1", b1, low=0.0, high=1.0, high_open=True)
    check_number(
        "preconditioner_update_probability",
        preconditioner_update_probability,
        low=0.0,
        high=1.0,
        allow_callable=True,
    )
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov: expected a bool, got {type(nesterov).__name__}")
    check_number("max_size_triangular", max_size_triangular, low=0, integer=True)
    check_number("max_skew_triangular", max_skew_triangular, low=0.0)
    check_number("precond_lr", precond_lr, low=0.0, low_open=True, allow_callable=True)
    check_number("precond_init_scale", precond_init_scale, low=0.0, low_open=True, allow_none=True)
    check_number(
        "update_global_norm_clip", update_global_norm_clip, low=0.0, low_open=True, allow_none=True
    )
    check_choice("step_normalizer_order", step_normalizer_order, ("1st", "2nd"))
    check_number("seed", seed, low=0, integer=True)
    check_dtype("mu_dtype", mu_dtype)

    def layout(shape: tuple[int, ...]) -> tuple[tuple[int, int], tuple[bool, bool]]:
        rows, cols = affine_math.matrix_shape(shape)
        kinds = affine_math.factor_kinds(
            rows,
            cols,
            max_size_triangular=max_size_triangular,
            max_skew_triangular=max_skew_triangular,
        )
        return (rows, cols), kinds

    def init(params: Params) -> OptState:
        leaves, spec = tree_flatten(params)
        mus: list[Any] = []
        qs: list[Any] = []
        for index, p in enumerate(leaves):
            if p is None:
                mus.append(None)
                qs.append(None)
                continue
            check_param_leaf(index, p)
            mshape, kinds = layout(tuple(p.shape))
            factors = kron_math.init_factors(
                mshape,
                kinds,
                batch=1,
                scale=1.0 if precond_init_scale is None else precond_init_scale,
                dtype=compute_dtype(p.dtype),
                device=p.device,
            )
            qs.append(tuple(f[0] for f in factors))
            mus.append(momentum_buffer(p, b1, mu_dtype))
        return initial_state(ScaleByAffineState, seed, spec, mus, qs)

    def update(
        updates: Updates,
        state: OptState,
        params: Params | None = None,
        *,
        inplace: bool = True,
        Hvp: Any = None,
        vector: Any = None,
        update_preconditioner: Any = None,
        **extra_args: Any,
    ) -> tuple[Updates, OptState]:
        del params, extra_args
        g_leaves, spec, mu_leaves, q_leaves = state_leaves(updates, state, ScaleByAffineState)
        old = int(state.count)
        dec = decide_fit(
            old,
            int(state.update_acc),
            preconditioner_update_probability,
            update_preconditioner,
            Hvp,
            vector,
        )
        h_leaves = flatten_like(spec, Hvp, "Hvp") if dec.fit and dec.newton else None
        v_leaves = flatten_like(spec, vector, "vector") if dec.fit and dec.newton else None
        lr_q = resolve_value("precond_lr", precond_lr, old)
        set_scale = dec.fit and precond_init_scale is None and not bool(state.scale_set)
        gens: dict[torch.device, torch.Generator] = {}
        new_mu: list[Any] = []
        new_q: list[Any] = []
        pres: list[torch.Tensor] = []
        idx: list[int] = []
        for index, (g, m, factors) in enumerate(zip(g_leaves, mu_leaves, q_leaves)):
            if g is None:
                new_mu.append(m)
                new_q.append(factors)
                continue
            if factors is None:
                raise ValueError(
                    f"updates: leaf {index} has a gradient but no preconditioner state"
                )
            mshape, kinds = layout(tuple(g.shape))
            ct = compute_dtype(factors[0].dtype)
            m_new, mhat = momentum(
                g, m, b1, dec.count, nesterov=nesterov, inplace=inplace, dtype=ct
            )
            new_mu.append(m_new)
            fs = tuple(f.unsqueeze(0) for f in factors)
            bshape = (1, *mshape)
            if dec.fit:
                if dec.newton:
                    hv, vv = h_leaves[index], v_leaves[index]  # type: ignore[index]
                    if hv is None or vv is None:
                        raise ValueError(
                            f"Hvp/vector: leaf {index} is None but its gradient is not"
                        )
                    h, v = hv.to(ct).reshape(bshape), vv.to(ct).reshape(bshape)
                else:
                    gen = gens.get(g.device)
                    if gen is None:
                        gen = gens[g.device] = generator_for(
                            g.device, step_seed(int(state.seed), dec.count)
                        )
                    v = torch.randn(bshape, generator=gen, dtype=ct, device=g.device)
                    src = g.to(ct).reshape(bshape)
                    h = src + (DAMPING * src.abs().mean()) * v
                if set_scale:
                    s = kron_math.auto_init_scale(h, v if dec.newton else None)
                    fs = kron_math.init_factors(
                        mshape, kinds, batch=1, scale=s, dtype=factors[0].dtype, device=g.device
                    )
                fs = kron_math.update_factors(
                    fs, kinds, v, h, lr=lr_q, geometry="eq", step_normalizer=step_normalizer_order
                )
                fs = kron_math.balance_factors(fs)
                stored = tuple(f[0] for f in fs)
                if inplace:
                    for old_f, new_f in zip(factors, stored):
                        old_f.copy_(new_f)
                    stored = factors
                new_q.append(stored)
            else:
                new_q.append(factors)
            pre = kron_math.precondition(fs, kinds, mhat.reshape(bshape))
            pres.append(pre.reshape(g.shape))
            idx.append(index)
        out: list[Any] = [None] * len(g_leaves)
        for i, p in zip(idx, clip_global_norm(pres, update_global_norm_clip)):
            out[i] = p.to(g_leaves[i].dtype)
        new_state = ScaleByAffineState(
            count=cpu_scalar(dec.count),
            update_acc=cpu_scalar(dec.acc),
            scale_set=cpu_scalar(bool(state.scale_set) or set_scale, torch.bool),
            seed=state.seed,
            mu=tree_unflatten(spec, new_mu),
            Qs=tree_unflatten(spec, new_q),
        )
        return tree_unflatten(spec, out), new_state

    return GradientTransformation(init, update)
