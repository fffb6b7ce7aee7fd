"""Ready-made PSGD optimizers: preconditioner, decoupled weight decay, learning rate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from optiquant.optim.base import GradientTransformation, chain
from optiquant.optim.transform import add_decayed_weights, scale, scale_by_schedule
from optiquant.psgd._common import check_number
from optiquant.psgd.affine_transform import scale_by_affine
from optiquant.psgd.global_transform import scale_by_lra, scale_by_xmat
from optiquant.psgd.kron_transform import scale_by_kron

__all__ = ["affine", "kron", "low_rank_approximation", "xmat"]


def _lr_and_decay(learning_rate: Any, weight_decay: Any, mask: Any) -> list[GradientTransformation]:
    check_number("learning_rate", learning_rate, low=0.0, allow_callable=True)
    check_number("weight_decay", weight_decay, low=0.0)
    parts: list[GradientTransformation] = []
    if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
        parts.append(add_decayed_weights(weight_decay, mask))
    if callable(learning_rate) and not isinstance(learning_rate, torch.Tensor):
        lr_fn = learning_rate
        parts.append(scale_by_schedule(lambda count: -lr_fn(count)))
    else:
        parts.append(scale(-learning_rate))
    return parts


def kron(
    learning_rate: float | torch.Tensor | Callable[[int], Any] = 1e-3,
    b1: float = 0.9,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
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
    """PSGD with Kronecker-factored preconditioners (psgd-jax's ``kron``).

    ``updates = -learning_rate * (clip(P m) + weight_decay * params)``, ``m`` the
    bias-corrected momentum; ``weight_decay_mask`` (a bool tree or a callable) selects
    the decayed params. Every other argument is documented in :func:`scale_by_kron`.

    >>> import torch, optiquant as oq
    >>> from optiquant.psgd import kron
    >>> w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    >>> tx = kron(learning_rate=0.1)
    >>> state = tx.init(w)
    >>> for _ in range(50):
    ...     updates, state = tx.update(2 * w, state, w)   # gradient of sum(w**2)
    ...     w = oq.apply_updates(w, updates)
    >>> bool((w**2).sum() < 0.05 * 14.25)   # the loss started at 14.25
    True
    """
    return chain(
        scale_by_kron(
            b1,
            preconditioner_update_probability,
            max_size_triangular,
            min_ndim_triangular,
            memory_save_mode,
            momentum_into_precond_update,
            precond_lr,
            precond_init_scale,
            mu_dtype,
            precond_dtype,
            scanned_layers=scanned_layers,
            scanned_chunk_size=scanned_chunk_size,
            geometry=geometry,
            clip_update_rms=clip_update_rms,
            seed=seed,
        ),
        *_lr_and_decay(learning_rate, weight_decay, weight_decay_mask),
    )


def xmat(
    learning_rate: float | torch.Tensor | Callable[[int], Any] = 0.01,
    preconditioner_update_probability: float | Callable[[int], Any] = 1.0,
    b1: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    mask: Any = None,
    precond_lr: float | Callable[[int], Any] = 0.1,
    precond_init_scale: float | None = None,
    update_global_norm_clip: float | None = None,
    step_normalizer_order: str = "2nd",
    seed: int = 0,
    mu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """PSGD with one X-shaped preconditioner over all params (psgd-jax's ``xmat``).

    Whitening by default; Hessian fitting when ``update`` receives ``Hvp=``,
    ``vector=`` and ``update_preconditioner=`` (see :func:`hessian_helper`).

    >>> import torch, optiquant as oq
    >>> from optiquant.psgd import xmat, hessian_helper
    >>> loss_fn = lambda p: ((p - 3.0) ** 2).sum()
    >>> params, opt = torch.tensor([1.0, 2.0, 3.0]), xmat(learning_rate=1.0, b1=0.0)
    >>> state, gen = opt.init(params), torch.Generator().manual_seed(0)
    >>> loss, grads, hvp, vec, upd = hessian_helper(gen, 0, loss_fn, params)
    >>> updates, state = opt.update(grads, state, Hvp=hvp, vector=vec, update_preconditioner=upd)
    >>> float(loss_fn(oq.apply_updates(params, updates))) < 1e-10   # one Newton step
    True
    """
    return chain(
        scale_by_xmat(
            b1,
            preconditioner_update_probability,
            nesterov,
            precond_lr,
            precond_init_scale,
            update_global_norm_clip,
            step_normalizer_order,
            seed,
            mu_dtype,
        ),
        *_lr_and_decay(learning_rate, weight_decay, mask),
    )


def low_rank_approximation(
    learning_rate: float | torch.Tensor | Callable[[int], Any] = 0.01,
    preconditioner_update_probability: float | Callable[[int], Any] = 1.0,
    b1: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    mask: Any = None,
    uvd_rank_of_approximation: int = 10,
    precond_lr: float | Callable[[int], Any] = 0.1,
    precond_init_scale: float | None = None,
    update_global_norm_clip: float | None = None,
    step_normalizer_order: str = "2nd",
    seed: int = 0,
    mu_dtype: torch.dtype | None = None,
    diag_step_normalizer: str = "global",
) -> GradientTransformation:
    """PSGD with one low-rank ``(I + U V^T) diag(d)`` preconditioner over all params
    (psgd-jax's ``low_rank_approximation``). Arguments as :func:`scale_by_lra`.

    >>> import torch
    >>> opt = low_rank_approximation(uvd_rank_of_approximation=4)
    >>> state = opt.init({"w": torch.zeros(3, 3), "b": torch.zeros(3)})
    >>> state[0].U.shape
    torch.Size([12, 4])
    """
    return chain(
        scale_by_lra(
            b1,
            preconditioner_update_probability,
            nesterov,
            uvd_rank_of_approximation,
            precond_lr,
            precond_init_scale,
            update_global_norm_clip,
            step_normalizer_order,
            seed,
            mu_dtype,
            diag_step_normalizer,
        ),
        *_lr_and_decay(learning_rate, weight_decay, mask),
    )


def affine(
    learning_rate: float | torch.Tensor | Callable[[int], Any] = 0.01,
    preconditioner_update_probability: float | Callable[[int], Any] = 1.0,
    b1: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    mask: Any = None,
    max_size_triangular: int = 4096,
    max_skew_triangular: float = 128,
    precond_lr: float | Callable[[int], Any] = 0.1,
    precond_init_scale: float | None = None,
    update_global_norm_clip: float | None = None,
    step_normalizer_order: str = "2nd",
    seed: int = 0,
    mu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """PSGD with a left and a right factor per param seen as a matrix (psgd-jax's ``affine``).

    >>> import torch
    >>> opt = affine()
    >>> state = opt.init(torch.zeros(4, 2, 3))
    >>> [tuple(q.shape) for q in state[0].Qs]
    [(4, 4), (6, 6)]
    """
    return chain(
        scale_by_affine(
            b1,
            preconditioner_update_probability,
            nesterov,
            max_size_triangular,
            max_skew_triangular,
            precond_lr,
            precond_init_scale,
            update_global_norm_clip,
            step_normalizer_order,
            seed,
            mu_dtype,
        ),
        *_lr_and_decay(learning_rate, weight_decay, mask),
    )
