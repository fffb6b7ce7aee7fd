"""``scale_by_kron``: the Kronecker-factored PSGD preconditioner as a transformation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from optiquant._typing import OptState, Params, Updates
from optiquant.optim.base import GradientTransformation
from optiquant.psgd import kron_math
from optiquant.psgd._common import (
    check_choice,
    check_dtype,
    check_number,
    compute_dtype,
    cpu_scalar,
    eval_mask,
    generator_for,
    resolve_value,
    step_seed,
)
from optiquant.psgd._step import (
    DAMPING,
    check_param_leaf,
    decide_fit,
    flatten_like,
    initial_state,
    momentum,
    momentum_buffer,
    state_leaves,
)
from optiquant.psgd.schedule import precond_update_prob_schedule
from optiquant.tree import tree_flatten, tree_unflatten

__all__ = ["ScaleByKronState", "kron_factor_kinds", "scale_by_kron"]


class ScaleByKronState(NamedTuple):
    """State of :func:`scale_by_kron`.

    ``count``, ``update_acc``, ``scale_set`` and ``seed`` are 0-d CPU tensors (so the
    schedule never waits on an accelerator): steps taken, the accumulated update
    probability in units of ``2**-32``, whether the initial scale has been set, and the
    seed from which every random probe is derived. ``mu`` (momentum, ``None`` leaves
    when ``b1 == 0``) and ``Qs`` (a tuple of factors per parameter) mirror the params.
    """

    count: torch.Tensor  # type: ignore[assignment]
    update_acc: torch.Tensor
    scale_set: torch.Tensor
    seed: torch.Tensor
    mu: Any
    Qs: Any


def _layout(shape: tuple[int, ...], scanned: bool) -> tuple[int, tuple[int, ...]]:
    if scanned:
        if len(shape) == 0 or shape[0] == 0:
            raise ValueError(
                f"scanned_layers: a scanned tensor needs a non-empty leading stack dimension, "
                f"got shape {shape}"
            )
        return shape[0], shape[1:]
    return 1, shape


def kron_factor_kinds(
    shape: tuple[int, ...],
    *,
    scanned: bool = False,
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: str | None = None,
) -> tuple[bool, ...]:
    """Factor kinds (``True`` = full matrix) that :func:`scale_by_kron` uses for ``shape``.

    >>> kron_factor_kinds((4, 64, 32), scanned=True, memory_save_mode="one_diag")
    (False, True)
    """
    _, core = _layout(tuple(shape), scanned)
    return kron_math.factor_kinds(
        core,
        max_size_triangular=max_size_triangular,
        min_ndim_triangular=min_ndim_triangular,
        memory_save_mode=memory_save_mode,
    )


def _chunks(batch: int, size: int | None) -> list[tuple[int, int]]:
    if size is None or size >= batch:
        return [(0, batch)]
    return [(s, min(s + size, batch)) for s in range(0, batch, size)]


def scale_by_kron(
    b1: float = 0.9,
    preconditioner_update_probability: float | Callable[[int], Any] | None = None,
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: str | None = None,
    momentum_into_precond_update: bool = True,
    precond_lr: float | Callable[[int], Any] = 0.1,
    precond_init_scale: float | None = 1.0,
    mu_dtype: torch.dtype | None = None,
    precond_dtype: torch.dtype | None = None,
    *,
    scanned_layers: Any = None,
    scanned_chunk_size: int | None = None,
    geometry: str = "eq",
    clip_update_rms: float | None = 1.1,
    seed: int = 0,
) -> GradientTransformation:
    """Precondition updates with a Kronecker-factored PSGD preconditioner (no learning rate).

    Args:
        b1: momentum (EMA with bias correction); 0 disables it.
        preconditioner_update_probability: float or schedule ``count -> p``; ``None``
            means :func:`~optiquant.psgd.precond_update_prob_schedule`. Refits follow the
            deterministic clock of :mod:`optiquant.psgd.schedule`.
        max_size_triangular, min_ndim_triangular, memory_save_mode: which dimensions get
            a full (triangular) factor, see :func:`optiquant.psgd.kron_math.factor_kinds`.
        momentum_into_precond_update: fit on the momentum (else on the raw gradient).
        precond_lr: preconditioner step size (float or schedule).
        precond_init_scale: initial ``P = scale**2 I``; ``None`` estimates it from the
            first fitting pair (per tensor; zero or non-finite estimates fall back to 1).
        mu_dtype, precond_dtype: storage dtypes of the momentum and of the factors
            (defaults: the parameter's dtype, and at least float32).
        scanned_layers: tree of bools like the params (or a callable building it); a
            ``True`` leaf is a stack of independent layers along dimension 0, each with
            its own preconditioner, fitted and applied batched.
        scanned_chunk_size: process scanned stacks this many layers at a time.
        geometry: ``"eq"`` (triangular factors, triangular solves) or ``"quad"``
            (symmetric factors, matmuls only); see :mod:`optiquant.psgd.kron_math`.
        clip_update_rms: scale each preconditioned tensor (each layer of a stack) down
            to at most this RMS; ``None`` disables it.
        seed: seed of the probe vectors (combined with the step count; identical on
            every process).

    With ``update(..., Hvp=..., vector=..., update_preconditioner=...)`` the factors
    are fitted to the Hessian (``P -> |H|^-1``) on the steps where
    ``update_preconditioner`` is true, instead of whitening the gradients.

    >>> import torch
    >>> tx = scale_by_kron(b1=0.0, preconditioner_update_probability=1.0)
    >>> w = torch.zeros(3, 2)
    >>> state = tx.init(w)
    >>> upd, state = tx.update(torch.ones(3, 2), state)
    >>> upd.shape, int(state.count)
    (torch.Size([3, 2]), 1)
    """
    check_number("b1", b1, low=0.0, high=1.0, high_open=True)
    if preconditioner_update_probability is None:
        preconditioner_update_probability = precond_update_prob_schedule()
    check_number(
        "preconditioner_update_probability",
        preconditioner_update_probability,
        low=0.0,
        high=1.0,
        allow_callable=True,
    )
    check_number("max_size_triangular", max_size_triangular, low=0, integer=True)
    check_number("min_ndim_triangular", min_ndim_triangular, low=0, integer=True)
    check_choice("memory_save_mode", memory_save_mode, kron_math.MEMORY_SAVE_MODES)
    if not isinstance(momentum_into_precond_update, bool):
        raise TypeError(
            "momentum_into_precond_update: expected a bool, got "
            f"{type(momentum_into_precond_update).__name__}"
        )
    check_number("precond_lr", precond_lr, low=0.0, low_open=True, allow_callable=True)
    check_number("precond_init_scale", precond_init_scale, low=0.0, low_open=True, allow_none=True)
    check_dtype("mu_dtype", mu_dtype)
    check_dtype("precond_dtype", precond_dtype)
    check_number("scanned_chunk_size", scanned_chunk_size, low=1, integer=True, allow_none=True)
    check_choice("geometry", geometry, kron_math.GEOMETRIES)
    check_number("clip_update_rms", clip_update_rms, low=0.0, low_open=True, allow_none=True)
    check_number("seed", seed, low=0, integer=True)
    prob = preconditioner_update_probability
    kind_opts = dict(
        max_size_triangular=max_size_triangular,
        min_ndim_triangular=min_ndim_triangular,
        memory_save_mode=memory_save_mode,
    )

    def leaf_kinds(
        shape: tuple[int, ...], scanned: bool
    ) -> tuple[int, tuple[int, ...], tuple[bool, ...]]:
        batch, core = _layout(shape, scanned)
        return batch, core, kron_math.factor_kinds(core, **kind_opts)  # type: ignore[arg-type]

    def init(params: Params) -> OptState:
        leaves, spec = tree_flatten(params)
        scanned = eval_mask(scanned_layers, params, "scanned_layers") or [False] * len(leaves)
        mus: list[Any] = []
        qs: list[Any] = []
        for index, (p, sc) in enumerate(zip(leaves, scanned)):
            if p is None:
                mus.append(None)
                qs.append(None)
                continue
            check_param_leaf(index, p)
            batch, core, kinds = leaf_kinds(tuple(p.shape), sc)
            qdtype = precond_dtype or compute_dtype(p.dtype)
            factors = kron_math.init_factors(
                core,
                kinds,
                batch=batch,
                scale=1.0 if precond_init_scale is None else precond_init_scale,
                dtype=qdtype,
                device=p.device,
            )
            if not sc:
                factors = tuple(f[0] for f in factors)
            qs.append(factors)
            mus.append(momentum_buffer(p, b1, mu_dtype))
        return initial_state(ScaleByKronState, seed, spec, mus, qs)

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
        g_leaves, spec, mu_leaves, q_leaves = state_leaves(updates, state, ScaleByKronState)
        scanned = eval_mask(scanned_layers, updates, "scanned_layers") or [False] * len(g_leaves)
        old_count = int(state.count)
        dec = decide_fit(old_count, int(state.update_acc), prob, update_preconditioner, Hvp, vector)
        count, acc, do_fit, newton = dec.count, dec.acc, dec.fit, dec.newton
        h_leaves = flatten_like(spec, Hvp, "Hvp") if do_fit and newton else None
        v_leaves = flatten_like(spec, vector, "vector") if do_fit and newton else None
        lr_q = resolve_value("precond_lr", precond_lr, old_count)
        set_scale = do_fit and precond_init_scale is None and not bool(state.scale_set)
        gens: dict[torch.device, torch.Generator] = {}

        out: list[Any] = []
        new_mu: list[Any] = []
        new_q: list[Any] = []
        for index, (g, m, factors, sc) in enumerate(zip(g_leaves, mu_leaves, q_leaves, scanned)):
            if g is None:
                out.append(None)
                new_mu.append(m)
                new_q.append(factors)
                continue
            if factors is None:
                raise ValueError(
                    f"updates: leaf {index} has a gradient but no preconditioner state"
                )
            batch, core, kinds = leaf_kinds(tuple(g.shape), sc)
            qdtype = factors[0].dtype
            ct = compute_dtype(qdtype)
            m_new, mhat = momentum(g, m, b1, count, nesterov=False, inplace=inplace, dtype=ct)
            bshape = (batch, *core)
            fs = tuple(f if sc else f.unsqueeze(0) for f in factors)
            if do_fit:
                if newton:
                    h_src = h_leaves[index]  # type: ignore[index]
                    v_src = v_leaves[index]  # type: ignore[index]
                    if h_src is None or v_src is None:
                        raise ValueError(
                            f"Hvp/vector: leaf {index} is None but its gradient is not"
                        )
                    hb = h_src.to(ct).reshape(bshape)
                    vb = v_src.to(ct).reshape(bshape)
                else:
                    src = mhat if momentum_into_precond_update else g.to(ct)
                    src = src.reshape(bshape)
                    gen = gens.get(g.device)
                    if gen is None:
                        gen = gens[g.device] = generator_for(
                            g.device, step_seed(int(state.seed), count)
                        )
                    vb = torch.randn(bshape, generator=gen, dtype=ct, device=g.device)
                    dims = tuple(range(1, src.ndim))
                    mean_abs = src.abs().mean(dims, keepdim=True) if dims else src.abs()
                    hb = src + (DAMPING * mean_abs) * vb
                if set_scale:
                    s = kron_math.auto_init_scale(hb, vb if newton else None)
                    fs = kron_math.init_factors(
                        core, kinds, batch=batch, scale=s, dtype=qdtype, device=g.device
                    )
                parts = []
                for s0, s1 in _chunks(batch, scanned_chunk_size if sc else None):
                    f_c = tuple(f[s0:s1] for f in fs)
                    f_c = kron_math.update_factors(
                        f_c,
                        kinds,
                        vb[s0:s1],
                        hb[s0:s1],
                        lr=lr_q,
                        geometry=geometry,
                        whitening=not newton,
                    )
                    parts.append(kron_math.balance_factors(f_c))
                fitted = tuple(torch.cat(p, 0) if len(parts) > 1 else p[0] for p in zip(*parts))
            else:
                fitted = fs
            mb = mhat.reshape(bshape)
            pre_parts = [
                kron_math.precondition(
                    tuple(f[s0:s1] for f in fitted), kinds, mb[s0:s1], geometry=geometry
                )
                for s0, s1 in _chunks(batch, scanned_chunk_size if sc else None)
            ]
            pre = torch.cat(pre_parts, 0) if len(pre_parts) > 1 else pre_parts[0]
            if clip_update_rms is not None:
                dims = tuple(range(1, pre.ndim))
                rms = pre.square().mean(dims, keepdim=True).sqrt() if dims else pre.abs()
                pre = pre / torch.clamp(rms / clip_update_rms, min=1.0)
            out.append(pre.reshape(g.shape).to(g.dtype))
            new_mu.append(m_new)
            if do_fit:
                stored = fitted if sc else tuple(f[0] for f in fitted)
                if inplace:
                    for old, new in zip(factors, stored):
                        old.copy_(new)
                    new_q.append(factors)
                else:
                    new_q.append(stored)
            else:
                new_q.append(factors)
        new_state = ScaleByKronState(
            count=cpu_scalar(count),
            update_acc=cpu_scalar(acc),
            scale_set=cpu_scalar(bool(state.scale_set) or set_scale, torch.bool),
            seed=state.seed,
            mu=tree_unflatten(spec, new_mu),
            Qs=tree_unflatten(spec, new_q),
        )
        return tree_unflatten(spec, out), new_state

    return GradientTransformation(init, update)
