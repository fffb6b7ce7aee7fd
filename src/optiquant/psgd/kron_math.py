"""The Kronecker-factored PSGD preconditioner, as pure functions on tensors.

A gradient tensor ``G`` of shape ``(d_1, ..., d_k)`` is preconditioned by
``P = Q^T Q`` with ``Q = Q_1 ⊗ ... ⊗ Q_k``; ``Q_i`` acts on mode ``i`` and is either a
full ``d_i x d_i`` matrix or a diagonal (stored as a vector). Everything here is
batched: tensors carry a leading stack dimension ``B`` (``B = 1`` for an ordinary
parameter) and every slice has its own factors.

Fitting minimises ``E[h^T P h + v^T P^{-1} v]`` over pairs ``(v, h)``. With
``h = H v`` (Hessian-vector products) the minimiser is ``P = |H|^{-1}``; with ``h`` a
gradient and ``v`` independent standard noise it is ``P = (E[h h^T])^{-1/2}``
(whitening). Two geometries are offered for the full factors:

``"eq"``
    ``Q_i`` upper-triangular; multiplicative step ``Q_i <- Q_i - mu triu(∇_i) Q_i``
    with ``∇_i = X X^T - Y Y^T`` where ``X``, ``Y`` are the mode-``i`` unfoldings of
    ``Q h`` and ``Q^{-T} v``. Needs triangular solves; ``mu = lr / ||X X^T + Y Y^T||``.
``"quad"``
    ``Q_i`` symmetric positive definite (``P_i = Q_i^2``); congruence step
    ``Q_i <- M Q_i M`` with ``M = I - a (X X^T - Y Y^T)``, now ``X`` the unfolding of
    ``P h`` and ``Y`` that of ``v`` (``Y Y^T`` replaced by its mean ``(n / d_i) I`` when
    whitening). Matmuls only, keeps ``Q_i`` symmetric and positive definite, so it
    suits low precision and accelerators.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from optiquant.psgd._linalg import (
    gram_norm_estimate,
    triu_gram_diff,
    triu_mm,
    triu_t_mm,
    triu_triu_mm,
)

__all__ = [
    "GEOMETRIES",
    "MEMORY_SAVE_MODES",
    "auto_init_scale",
    "balance_factors",
    "dense_preconditioner",
    "factor_kinds",
    "init_factors",
    "precondition",
    "update_factors",
]

GEOMETRIES = ("eq", "quad")
MEMORY_SAVE_MODES = (None, "one_diag", "smart_one_diag", "all_diag")

Factors = tuple[torch.Tensor, ...]
Kinds = tuple[bool, ...]


def factor_kinds(
    shape: Sequence[int],
    *,
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: str | None = None,
) -> Kinds:
    """Which dimensions of a tensor of ``shape`` get a full factor (``True``) or a diagonal.

    A dimension is diagonal when its size is 1 or above ``max_size_triangular``, when
    the tensor has fewer than ``min_ndim_triangular`` dimensions, or when
    ``memory_save_mode`` says so: ``"one_diag"`` makes the largest dimension diagonal
    (the last one among equal sizes), ``"smart_one_diag"`` only when it is strictly
    larger than every other, ``"all_diag"`` makes every dimension diagonal. A scalar
    gets one diagonal factor of size 1.

    >>> factor_kinds((512, 784))
    (True, True)
    >>> factor_kinds((512, 784), memory_save_mode="one_diag")
    (True, False)
    >>> factor_kinds((512,)), factor_kinds(())
    ((False,), (False,))
    """
    if memory_save_mode not in MEMORY_SAVE_MODES:
        raise ValueError(
            f"memory_save_mode: expected one of {MEMORY_SAVE_MODES!r}, got {memory_save_mode!r}"
        )
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return (False,)
    diag_dim = -1
    if memory_save_mode in ("one_diag", "smart_one_diag"):
        largest = max(shape)
        diag_dim = max(i for i, s in enumerate(shape) if s == largest)
        if memory_save_mode == "smart_one_diag" and sorted(shape)[-2:].count(largest) > 1:
            diag_dim = -1
    kinds = []
    for i, size in enumerate(shape):
        diagonal = (
            memory_save_mode == "all_diag"
            or size == 1
            or size > max_size_triangular
            or len(shape) < min_ndim_triangular
            or i == diag_dim
        )
        kinds.append(not diagonal)
    return tuple(kinds)


def _core_shape(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(shape) if len(shape) else (1,)


def init_factors(
    shape: Sequence[int],
    kinds: Kinds,
    *,
    batch: int,
    scale: float | torch.Tensor = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Factors:
    """Factors with ``P = scale**2 * I``: ``(batch, d, d)`` identities or ``(batch, d)`` ones.

    ``scale`` may be a ``(batch,)`` tensor (one scale per slice).

    >>> [f.shape for f in init_factors((3, 4), (True, False), batch=2)]
    [torch.Size([2, 3, 3]), torch.Size([2, 4])]
    """
    core = _core_shape(shape)
    if len(core) != len(kinds):
        raise ValueError(
            f"kinds: expected {len(core)} entries for shape {tuple(shape)}, got {kinds}"
        )
    s = torch.as_tensor(scale, dtype=torch.float64).to(device) ** (1.0 / len(core))
    s = s.expand(batch).to(dtype)
    factors = []
    for size, full in zip(core, kinds):
        if full:
            eye = torch.eye(size, dtype=dtype, device=device)
            factors.append(eye * s.view(-1, 1, 1))
        else:
            factors.append(torch.ones(batch, size, dtype=dtype, device=device) * s.view(-1, 1))
    return tuple(f.contiguous() for f in factors)


def auto_init_scale(h: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
    """Per-slice scale ``s`` such that ``P = s**2 I`` matches the first pair's magnitude.

    Whitening (``v`` is ``None``): ``s = mean(h**2) ** (-1/4)``; Hessian fitting:
    ``s = (mean(v**2) / mean(h**2)) ** (1/4)``. Slices whose estimate is zero or not
    finite (an all-zero gradient, an overflow) fall back to 1. Returns ``(B,)``.

    >>> auto_init_scale(torch.full((1, 4), 4.0)).tolist()
    [0.5]
    >>> auto_init_scale(torch.zeros(1, 3)).tolist()
    [1.0]
    """
    dims = tuple(range(1, h.ndim))
    hh = h.to(torch.float64).square().mean(dims) if dims else h.to(torch.float64).square()
    if v is None:
        s = hh.pow(-0.25)
    else:
        vv = v.to(torch.float64).square().mean(dims) if dims else v.to(torch.float64).square()
        s = (vv / hh).pow(0.25)
    good = torch.isfinite(s) & (s > 0)
    return torch.where(good, s, torch.ones_like(s))


# ----------------------------------------------------------------------------- modes


def _unfold(x: torch.Tensor, i: int) -> torch.Tensor:
    """Mode-``i`` unfolding ``(B, d_i, rest)`` of a batched tensor ``(B, d_1, ..., d_k)``."""
    n = x.ndim - 1
    if n == 1:
        return x.unsqueeze(-1)
    if n == 2:
        return x if i == 0 else x.mT
    return x.movedim(i + 1, 1).reshape(x.shape[0], x.shape[i + 1], -1)


def _fold(y: torch.Tensor, i: int, shape: torch.Size) -> torch.Tensor:
    n = len(shape) - 1
    if n == 1:
        return y.squeeze(-1)
    if n == 2:
        return y if i == 0 else y.mT
    moved = (shape[0], shape[i + 1], *tuple(s for j, s in enumerate(shape[1:]) if j != i))
    return y.reshape(moved).movedim(1, i + 1)


def _diag_view(q: torch.Tensor, i: int, ndim: int) -> torch.Tensor:
    shape = [q.shape[0]] + [1] * (ndim - 1)
    shape[i + 1] = q.shape[1]
    return q.view(shape)


def _mode_apply(x: torch.Tensor, i: int, fn) -> torch.Tensor:
    return _fold(fn(_unfold(x, i)), i, x.shape)


def _check(factors: Factors, kinds: Kinds, x: torch.Tensor) -> None:
    if len(factors) != len(kinds) or len(kinds) != x.ndim - 1:
        raise ValueError(
            f"factors: expected {x.ndim - 1} factors for a batched tensor of shape "
            f"{tuple(x.shape)}, got {len(factors)} (kinds {kinds})"
        )


def _as_core(x: torch.Tensor) -> torch.Tensor:
    """A batched scalar ``(B,)`` becomes ``(B, 1)`` so that it has one mode."""
    return x.unsqueeze(-1) if x.ndim == 1 else x


def precondition(
    factors: Factors, kinds: Kinds, g: torch.Tensor, *, geometry: str = "eq"
) -> torch.Tensor:
    """``P g`` for a batched tensor ``g`` of shape ``(B, *shape)``.

    >>> f = init_factors((2, 3), (True, True), batch=1, scale=4.0)
    >>> precondition(f, (True, True), torch.ones(1, 2, 3))[0, 0].tolist()
    [16.0, 16.0, 16.0]
    """
    x = _as_core(g)
    _check(factors, kinds, x)
    ndim = x.ndim
    diag_scale = None
    for i, (q, full) in enumerate(zip(factors, kinds)):
        q = q.to(x.dtype)
        if not full:
            s = _diag_view(q * q, i, ndim)
            diag_scale = s if diag_scale is None else diag_scale * s
        elif geometry == "eq":
            x = _mode_apply(x, i, lambda u, q=q: triu_t_mm(q, triu_mm(q, u)))
        else:
            x = _mode_apply(x, i, lambda u, q=q: torch.matmul(q, torch.matmul(q, u)))
    if diag_scale is not None:
        x = x * diag_scale
    return x.reshape(g.shape)


def _apply_q(factors: Factors, kinds: Kinds, x: torch.Tensor) -> torch.Tensor:
    """``Q x`` for triangular (EQ) factors."""
    ndim = x.ndim
    for i, (q, full) in enumerate(zip(factors, kinds)):
        if full:
            x = _mode_apply(x, i, lambda u, q=q: triu_mm(q, u))
        else:
            x = x * _diag_view(q, i, ndim)
    return x


def _apply_q_inv_t(factors: Factors, kinds: Kinds, x: torch.Tensor) -> torch.Tensor:
    """``Q^{-T} x`` for triangular (EQ) factors (triangular solves)."""
    ndim = x.ndim
    for i, (q, full) in enumerate(zip(factors, kinds)):
        if full:
            # Q^{-T} u = (u^T Q^{-1})^T: the right-sided solve on Q itself is about twice
            # as fast as a left solve with the transposed view
            x = _mode_apply(
                x,
                i,
                lambda u, q=q: torch.linalg.solve_triangular(q, u.mT, upper=True, left=False).mT,
            )
        else:
            x = x / _diag_view(q, i, ndim)
    return x


def _lr_view(lr: float | torch.Tensor, lam: torch.Tensor, extra: int) -> torch.Tensor:
    mu = lr / lam.clamp_min(torch.finfo(lam.dtype).tiny)
    return mu.view((-1,) + (1,) * extra)


def update_factors(
    factors: Factors,
    kinds: Kinds,
    v: torch.Tensor,
    h: torch.Tensor,
    *,
    lr: float | torch.Tensor = 0.1,
    geometry: str = "eq",
    whitening: bool = True,
    step_normalizer: str = "2nd",
) -> Factors:
    """One fitting step of the factors on the pair ``(v, h)`` (both ``(B, *shape)``).

    ``whitening=True`` means ``h`` is a (damped) gradient and ``v`` the noise that
    was mixed into it; ``False`` means ``h = H v``. With the ``"quad"`` geometry and
    whitening, ``v`` is integrated out. ``step_normalizer`` is ``"2nd"`` (divide by a
    bound on the curvature, the default) or ``"1st"`` (divide by the gradient norm).
    Returns new factors in the dtype of the old ones.

    >>> f = init_factors((3, 2), (True, False), batch=1)
    >>> v = torch.randn(1, 3, 2)
    >>> new = update_factors(f, (True, False), v, 4.0 * v, whitening=False)
    >>> [tuple(q.shape) for q in new], bool(torch.equal(new[0], new[0].triu()))
    ([(1, 3, 3), (1, 2)], True)
    """
    x_h, x_v = _as_core(h), _as_core(v)
    _check(factors, kinds, x_h)
    ct = torch.promote_types(factors[0].dtype, torch.float32)
    fs = tuple(q.to(ct) for q in factors)
    x_h, x_v = x_h.to(ct), x_v.to(ct)
    if geometry == "eq":
        new = _update_eq(fs, kinds, x_v, x_h, lr, step_normalizer)
    elif geometry == "quad":
        new = _update_quad(fs, kinds, x_v, x_h, lr, whitening)
    else:
        raise ValueError(f"geometry: expected one of {GEOMETRIES!r}, got {geometry!r}")
    return tuple(n.to(q.dtype) for n, q in zip(new, factors))


def _update_eq(fs, kinds, v, h, lr, step_normalizer) -> Factors:
    a = _apply_q(fs, kinds, h)
    b = _apply_q_inv_t(fs, kinds, v)
    out = []
    for i, (q, full) in enumerate(zip(fs, kinds)):
        x, y = _unfold(a, i), _unfold(b, i)
        if full:
            grad = triu_gram_diff(x, y)
            if step_normalizer == "2nd":
                lam = gram_norm_estimate(x, y)
            else:
                lam = torch.linalg.matrix_norm(grad)
            out.append(q - _lr_view(lr, lam, 2) * triu_triu_mm(grad, q))
        else:
            t1 = (x * x).sum(-1)
            t2 = (y * y).sum(-1)
            grad = t1 - t2
            lam = (t1 + t2).amax(-1) if step_normalizer == "2nd" else grad.abs().amax(-1)
            out.append(q - _lr_view(lr, lam, 1) * grad * q)
    return tuple(out)


def _update_quad(fs, kinds, v, h, lr, whitening) -> Factors:
    ph = precondition(fs, kinds, h, geometry="quad")
    numel = h[0].numel()
    out = []
    for i, (q, full) in enumerate(zip(fs, kinds)):
        x = _unfold(ph, i)
        d = x.shape[-2]
        y = None if whitening else _unfold(v, i)
        c = numel / d
        if full:
            e = torch.matmul(x, x.mT)
            if y is None:
                e = e - c * torch.eye(d, dtype=e.dtype, device=e.device)
                lam = gram_norm_estimate(x) + c
            else:
                e = e - torch.matmul(y, y.mT)
                lam = gram_norm_estimate(x) + gram_norm_estimate(y)
            a = _lr_view(lr, 2.0 * lam, 2)
            eq = torch.matmul(e, q)
            new = q - a * (eq + eq.mT) + (a * a) * torch.matmul(eq, e)
            out.append(0.5 * (new + new.mT))
        else:
            t1 = (x * x).sum(-1)
            t2 = (y * y).sum(-1) if y is not None else torch.full_like(t1, c)
            lam = t1.amax(-1) + t2.amax(-1)
            gain = 1.0 - _lr_view(lr, 2.0 * lam, 1) * (t1 - t2)
            out.append(q * gain * gain)
    return tuple(out)


def balance_factors(factors: Factors) -> Factors:
    """Rescale the factors so their largest entries are equal; ``P`` does not change.

    >>> f = (torch.full((1, 2, 2), 8.0), torch.full((1, 3), 0.5))
    >>> [float(t.abs().max()) for t in balance_factors(f)]
    [2.0, 2.0]
    """
    if len(factors) < 2:
        return tuple(factors)
    norms = torch.stack([q.abs().flatten(1).amax(1).to(torch.float32) for q in factors])  # (k, B)
    tiny = torch.finfo(torch.float32).tiny
    ok = torch.isfinite(norms).all(0) & (norms > tiny).all(0)
    logs = norms.clamp_min(tiny).log()
    target = logs.mean(0, keepdim=True)
    gains = torch.where(ok, (target - logs).exp(), torch.ones_like(norms))
    out = []
    for q, gain in zip(factors, gains):
        out.append(q * gain.to(q.dtype).view((-1,) + (1,) * (q.ndim - 1)))
    return tuple(out)


def dense_preconditioner(factors: Factors, kinds: Kinds, *, geometry: str = "eq") -> torch.Tensor:
    """The explicit ``P`` of slice 0 (row-major ``vec`` convention), for tests and inspection.

    >>> f = init_factors((2, 2), (True, False), batch=1, scale=3.0)
    >>> dense_preconditioner(f, (True, False)).diagonal().tolist()
    [9.0, 9.0, 9.0, 9.0]
    """
    p = None
    for q, full in zip(factors, kinds):
        q0 = q[0].to(torch.promote_types(q.dtype, torch.float32))
        pi = (q0.mT @ q0) if full else torch.diag(q0 * q0)
        p = pi if p is None else torch.kron(p, pi)
    if p is None:
        raise ValueError("factors: expected at least one factor")
    return p
