"""Differentiable optimization: unrolled meta-optimizers, implicit and zero-order gradients.

* explicit (unrolled): :class:`MetaOptimizer` and :class:`MetaSGD`, :class:`MetaAdam`, ...;
  :func:`extract_state_dict`, :func:`recover_state_dict`, :func:`stop_gradient`;
* implicit: :func:`custom_root`, the solvers in :mod:`optiquant.diff.linear_solve`,
  :class:`ImplicitMetaGradientModule`;
* zero-order: :func:`zero_order`, :class:`ZeroOrderGradientModule`;
* :func:`optiquant.diff.visual.make_dot` draws the autograd graph of a meta-loss.
"""

from optiquant.diff import implicit, linalg, linear_solve, visual
from optiquant.diff._zero_order import Samplable, zero_order
from optiquant.diff.implicit import custom_root
from optiquant.diff.linear_solve import solve_cg, solve_inv, solve_normal_cg
from optiquant.diff.meta import (
    MetaAdaGrad,
    MetaAdagrad,
    MetaAdam,
    MetaAdamW,
    MetaOptimizer,
    MetaRMSProp,
    MetaRMSprop,
    MetaSGD,
)
from optiquant.diff.nn import (
    ImplicitMetaGradientModule,
    MetaGradientModule,
    ZeroOrderGradientModule,
    reparametrize,
)
from optiquant.diff.state import ModuleState, extract_state_dict, recover_state_dict, stop_gradient

__all__ = [
    "ImplicitMetaGradientModule",
    "MetaAdaGrad",
    "MetaAdagrad",
    "MetaAdam",
    "MetaAdamW",
    "MetaGradientModule",
    "MetaOptimizer",
    "MetaRMSProp",
    "MetaRMSprop",
    "MetaSGD",
    "ModuleState",
    "Samplable",
    "ZeroOrderGradientModule",
    "custom_root",
    "extract_state_dict",
    "implicit",
    "linalg",
    "linear_solve",
    "recover_state_dict",
    "reparametrize",
    "solve_cg",
    "solve_inv",
    "solve_normal_cg",
    "stop_gradient",
    "visual",
    "zero_order",
]
