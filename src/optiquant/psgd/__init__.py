"""PSGD: preconditioned SGD with preconditioners fitted on Lie groups (Xi-Lin Li).

Four preconditioner families, each as a transformation (``scale_by_*``), a ready
optimizer (alias) and a ``torch.optim`` class:

* :func:`kron` / :class:`Kron`: a Kronecker product of triangular or diagonal factors
  per parameter tensor;
* :func:`xmat` / :class:`XMat`: one X-shaped (diagonal plus anti-diagonal) matrix over
  all parameters;
* :func:`low_rank_approximation` / :class:`LRA`: ``(I + U V^T) diag(d)`` over all
  parameters;
* :func:`affine` / :class:`Affine`: a Kronecker pair of factors per parameter viewed as
  a matrix.

Each fits ``P`` either by whitening the gradients (``P -> (E g g^T)^(-1/2)``) or, when
the update receives Hessian-vector products (see :func:`hessian_helper`), by matching
the Hessian (``P -> |H|^(-1)``). The pure math lives in ``kron_math``, ``xmat_math``,
``lra_math`` and ``affine_math``.
"""

from optiquant.psgd.affine_transform import ScaleByAffineState, scale_by_affine
from optiquant.psgd.alias import affine, kron, low_rank_approximation, xmat
from optiquant.psgd.global_transform import (
    ScaleByLRAState,
    ScaleByXMatState,
    scale_by_lra,
    scale_by_xmat,
)
from optiquant.psgd.hessian import hessian_helper, hvp
from optiquant.psgd.kron_transform import ScaleByKronState, kron_factor_kinds, scale_by_kron
from optiquant.psgd.optimizers import LRA, Affine, Kron, XMat
from optiquant.psgd.schedule import PrecondUpdateProbSchedule, precond_update_prob_schedule

__all__ = [
    "LRA",
    "Affine",
    "Kron",
    "PrecondUpdateProbSchedule",
    "ScaleByAffineState",
    "ScaleByKronState",
    "ScaleByLRAState",
    "ScaleByXMatState",
    "XMat",
    "affine",
    "hessian_helper",
    "hvp",
    "kron",
    "kron_factor_kinds",
    "low_rank_approximation",
    "precond_update_prob_schedule",
    "scale_by_affine",
    "scale_by_kron",
    "scale_by_lra",
    "scale_by_xmat",
    "xmat",
]
