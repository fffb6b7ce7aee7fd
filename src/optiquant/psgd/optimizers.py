"""``torch.optim`` front ends: :class:`Kron`, :class:`XMat`, :class:`LRA`, :class:`Affine`.

Each param group runs its own preconditioner (XMat and LRA: one over the whole group).
All state, including the refit clock and the probe seed, is in ``state_dict()``, and
probes depend only on that seed and the step count, so every DDP rank makes the same
decisions. These classes fit by whitening; for Hessian fitting use the functional
aliases with :func:`~optiquant.psgd.hessian_helper`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from optiquant.optim.base import GradientTransformation
from optiquant.optim.torch_optim import Optimizer
from optiquant.psgd import alias

__all__ = ["LRA", "Affine", "Kron", "XMat"]


def _pick(group: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: group[name] for name in names}


class Kron(Optimizer):
    """PSGD-Kron as a ``torch.optim.Optimizer`` (arguments as :func:`optiquant.psgd.kron`).

    ``scanned_layers=True`` in a param group marks every tensor of the group as a stack of
    independent layers along dimension 0.

    >>> import torch
    >>> from optiquant.psgd import Kron
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = Kron(model.parameters(), lr=1e-2)
    >>> model(torch.randn(8, 4)).pow(2).mean().backward()
    >>> opt.step()
    >>> sorted(k for k in opt.state_dict()["state"][0] if k.startswith("group/"))
    ['group/0.count', 'group/0.scale_set', 'group/0.seed', 'group/0.update_acc']
    """

    #: Kron multiplies along every dimension: FSDP2 shards are gathered whole first.
    whole_tensors = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        b1: float = 0.9,
        weight_decay: float = 0.0,
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
        scanned_layers: bool = False,
        scanned_chunk_size: int | None = None,
        geometry: str = "eq",
        clip_update_rms: float | None = 1.1,
        seed: int = 0,
    ) -> None:
        # None (the default schedule) stays None in the param groups so that state_dict()
        # holds only plain values and loads with torch.load(weights_only=True)
        defaults = dict(
            lr=lr,
            b1=b1,
            weight_decay=weight_decay,
            preconditioner_update_probability=preconditioner_update_probability,
            max_size_triangular=max_size_triangular,
            min_ndim_triangular=min_ndim_triangular,
            memory_save_mode=memory_save_mode,
            momentum_into_precond_update=momentum_into_precond_update,
            precond_lr=precond_lr,
            precond_init_scale=precond_init_scale,
            mu_dtype=mu_dtype,
            precond_dtype=precond_dtype,
            scanned_layers=scanned_layers,
            scanned_chunk_size=scanned_chunk_size,
            geometry=geometry,
            clip_update_rms=clip_update_rms,
            seed=seed,
        )
        self._build(defaults)  # validates
        super().__init__(params, defaults=defaults)

    def _build(self, group: dict[str, Any]) -> GradientTransformation:
        scanned = bool(group["scanned_layers"])
        return alias.kron(
            learning_rate=group["lr"],
            scanned_layers=(lambda tree: [scanned] * len(tree)) if scanned else None,
            **_pick(
                group,
                "b1",
                "weight_decay",
                "preconditioner_update_probability",
                "max_size_triangular",
                "min_ndim_triangular",
                "memory_save_mode",
                "momentum_into_precond_update",
                "precond_lr",
                "precond_init_scale",
                "mu_dtype",
                "precond_dtype",
                "scanned_chunk_size",
                "geometry",
                "clip_update_rms",
                "seed",
            ),
        )


_GLOBAL_COMMON = (
    "b1",
    "nesterov",
    "weight_decay",
    "preconditioner_update_probability",
    "precond_lr",
    "precond_init_scale",
    "update_global_norm_clip",
    "step_normalizer_order",
    "seed",
    "mu_dtype",
)


class _GlobalBase(Optimizer):
    _extra: tuple[str, ...] = ()
    #: These preconditioners couple all parameters: FSDP2 shards are gathered whole first.
    whole_tensors = True

    def __init__(self, params: Iterable[Any], **defaults: Any) -> None:
        self._build(defaults)  # validates
        super().__init__(params, defaults=defaults)


class XMat(_GlobalBase):
    """PSGD-XMat as a ``torch.optim.Optimizer`` (arguments as :func:`optiquant.psgd.xmat`).

    >>> import torch
    >>> from optiquant.psgd import XMat
    >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    >>> opt = XMat([w], lr=0.1)
    >>> for _ in range(3):
    ...     opt.zero_grad()
    ...     (w ** 2).sum().backward()
    ...     opt.step()
    >>> bool((w ** 2).sum() < 14.0)
    True
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 0.01,
        b1: float = 0.9,
        weight_decay: float = 0.0,
        preconditioner_update_probability: float | Callable[[int], Any] = 1.0,
        nesterov: bool = False,
        precond_lr: float | Callable[[int], Any] = 0.1,
        precond_init_scale: float | None = None,
        update_global_norm_clip: float | None = None,
        step_normalizer_order: str = "2nd",
        seed: int = 0,
        mu_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            b1=b1,
            weight_decay=weight_decay,
            preconditioner_update_probability=preconditioner_update_probability,
            nesterov=nesterov,
            precond_lr=precond_lr,
            precond_init_scale=precond_init_scale,
            update_global_norm_clip=update_global_norm_clip,
            step_normalizer_order=step_normalizer_order,
            seed=seed,
            mu_dtype=mu_dtype,
        )

    def _build(self, group: dict[str, Any]) -> GradientTransformation:
        kw = _pick(group, *_GLOBAL_COMMON)
        kw["mask"] = None
        return alias.xmat(learning_rate=group["lr"], **kw)


class LRA(_GlobalBase):
    """PSGD-LRA as a ``torch.optim.Optimizer`` (arguments as
    :func:`optiquant.psgd.low_rank_approximation`; ``rank`` is ``uvd_rank_of_approximation``).

    >>> import torch
    >>> from optiquant.psgd import LRA
    >>> opt = LRA(torch.nn.Linear(3, 2).parameters(), rank=2)
    >>> opt.param_groups[0]["rank"]
    2
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 0.01,
        b1: float = 0.9,
        weight_decay: float = 0.0,
        preconditioner_update_probability: float | Callable[[int], Any] = 1.0,
        nesterov: bool = False,
        rank: int = 10,
        precond_lr: float | Callable[[int], Any] = 0.1,
        precond_init_scale: float | None = None,
        update_global_norm_clip: float | None = None,
        step_normalizer_order: str = "2nd",
        seed: int = 0,
        mu_dtype: torch.dtype | None = None,
        diag_step_normalizer: str = "global",
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            b1=b1,
            weight_decay=weight_decay,
            preconditioner_update_probability=preconditioner_update_probability,
            nesterov=nesterov,
            rank=rank,
            diag_step_normalizer=diag_step_normalizer,
            precond_lr=precond_lr,
            precond_init_scale=precond_init_scale,
            update_global_norm_clip=update_global_norm_clip,
            step_normalizer_order=step_normalizer_order,
            seed=seed,
            mu_dtype=mu_dtype,
        )

    def _build(self, group: dict[str, Any]) -> GradientTransformation:
        kw = _pick(group, *_GLOBAL_COMMON)
        kw["mask"] = None
        return alias.low_rank_approximation(
            learning_rate=group["lr"],
            uvd_rank_of_approximation=group["rank"],
            diag_step_normalizer=group.get("diag_step_normalizer", "global"),
            **kw,
        )


class Affine(_GlobalBase):
    """PSGD-Affine as a ``torch.optim.Optimizer`` (arguments as :func:`optiquant.psgd.affine`).

    >>> import torch
    >>> from optiquant.psgd import Affine
    >>> opt = Affine(torch.nn.Linear(3, 2).parameters(), max_skew_triangular=64)
    >>> opt.param_groups[0]["max_size_triangular"]
    4096
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 0.01,
        b1: float = 0.9,
        weight_decay: float = 0.0,
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
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            b1=b1,
            weight_decay=weight_decay,
            preconditioner_update_probability=preconditioner_update_probability,
            nesterov=nesterov,
            max_size_triangular=max_size_triangular,
            max_skew_triangular=max_skew_triangular,
            precond_lr=precond_lr,
            precond_init_scale=precond_init_scale,
            update_global_norm_clip=update_global_norm_clip,
            step_normalizer_order=step_normalizer_order,
            seed=seed,
            mu_dtype=mu_dtype,
        )

    def _build(self, group: dict[str, Any]) -> GradientTransformation:
        kw = _pick(group, *_GLOBAL_COMMON, "max_size_triangular", "max_skew_triangular")
        kw["mask"] = None
        return alias.affine(learning_rate=group["lr"], **kw)
