"""Functional (optax-style) and torch.optim-style optimizers."""

from optiquant.optim import schedule, transform
from optiquant.optim.alias import adagrad, adam, adamax, adamw, lion, nadam, radam, rmsprop, sgd
from optiquant.optim.base import EmptyState, GradientTransformation, chain, identity
from optiquant.optim.combine import apply_if_finite, masked
from optiquant.optim.func import FuncOptimizer
from optiquant.optim.torch_optim import (
    SGD,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    Lion,
    NAdam,
    Optimizer,
    RAdam,
    RMSProp,
    RMSprop,
)
from optiquant.optim.update import apply_updates, update_and_apply

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "EmptyState",
    "FuncOptimizer",
    "GradientTransformation",
    "Lion",
    "NAdam",
    "Optimizer",
    "RAdam",
    "RMSProp",
    "RMSprop",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "apply_if_finite",
    "apply_updates",
    "chain",
    "identity",
    "lion",
    "masked",
    "nadam",
    "radam",
    "rmsprop",
    "schedule",
    "sgd",
    "transform",
    "update_and_apply",
]
