"""Zero-order (evolution-strategy) gradient estimates for functions autograd cannot see through.

For noise ``z`` with zero mean and identity covariance (for example a standard normal), the
smoothed objective ``f_sigma(theta) = E[f(theta + sigma z)]`` has gradient
``E[f(theta + sigma z) z] / sigma``. The three estimators average ``num_samples`` draws:

* ``'naive'``: ``f(theta + sigma z) z / sigma``;
* ``'forward'``: ``(f(theta + sigma z) - f(theta)) z / sigma`` (same mean, lower variance);
* ``'antithetic'``: ``(f(theta + sigma z) - f(theta - sigma z)) z / (2 sigma)``.

All differentiated arguments are perturbed together, one joint draw per sample.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch.autograd.function import once_differentiable

from optiquant.diff._flat import flatten_tensors
from optiquant.tree import tree_map, tree_unflatten

__all__ = ["Samplable", "zero_order"]

Method = Literal["naive", "forward", "antithetic"]
_METHODS = ("naive", "forward", "antithetic")


@runtime_checkable
class Samplable(Protocol):
    """Anything with ``sample(sample_shape)``, such as a :mod:`torch.distributions` object."""

    def sample(self, sample_shape: torch.Size = ...) -> torch.Tensor: ...


Distribution = Samplable | Callable[[torch.Size], torch.Tensor]


def _sampler(distribution: Distribution) -> Callable[[torch.Size], torch.Tensor]:
    if isinstance(distribution, Samplable):
        return lambda shape: distribution.sample(shape)
    if callable(distribution):
        return distribution
    raise TypeError(
        "distribution: expected a callable sample_shape -> Tensor or an object with "
        f"sample(sample_shape) (e.g. torch.distributions.Normal(0.0, 1.0)), "
        f"got {type(distribution).__name__}"
    )


def _check_scalar(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must return a tensor, got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(
            f"{name} must return a scalar tensor (one element), got shape {tuple(value.shape)}"
        )
    if not value.is_floating_point():
        raise TypeError(f"{name} must return a floating point tensor, got {value.dtype}")
    return value


class _Estimator:
    """The per-call data the backward pass needs to draw and evaluate perturbations."""

    def __init__(
        self,
        evaluate: Callable[[list[torch.Tensor]], torch.Tensor],
        sample: Callable[[torch.Size], torch.Tensor],
        method: Method,
        num_samples: int,
        sigma: float,
        params: list[torch.Tensor],
        value: torch.Tensor,
    ) -> None:
        self.evaluate = evaluate
        self.sample = sample
        self.method = method
        self.num_samples = num_samples
        self.sigma = sigma
        self.params = params
        self.value = value

    def _noise(self) -> list[torch.Tensor]:
        noise = []
        for index, p in enumerate(self.params):
            z = self.sample(p.shape)
            if not isinstance(z, torch.Tensor) or z.shape != p.shape:
                got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
                raise ValueError(
                    f"distribution: a sample for parameter {index} must have shape "
                    f"{tuple(p.shape)}, got {got}"
                )
            noise.append(z.to(dtype=p.dtype, device=p.device))
        return noise

    def _shifted(self, noise: list[torch.Tensor], scale: float) -> torch.Tensor:
        value = self.evaluate([p + scale * z for p, z in zip(self.params, noise)])
        return _check_scalar(value, "fn").reshape(())

    def gradients(self) -> list[torch.Tensor]:
        grads = [torch.zeros_like(p) for p in self.params]
        sigma = self.sigma
        for _ in range(self.num_samples):
            noise = self._noise()
            if self.method == "antithetic":
                weight = (self._shifted(noise, sigma) - self._shifted(noise, -sigma)) / (2 * sigma)
            elif self.method == "forward":
                weight = (self._shifted(noise, sigma) - self.value) / sigma
            else:
                weight = self._shifted(noise, sigma) / sigma
            for g, z in zip(grads, noise):
                g.add_(weight.to(g.dtype) * z)
        return [g / self.num_samples for g in grads]


class _ZeroOrderFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, estimator: _Estimator, *params: torch.Tensor) -> torch.Tensor:
        ctx.estimator = estimator
        return estimator.value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        with torch.no_grad():
            grads = ctx.estimator.gradients()
        scale = grad_output.reshape(())
        return (None, *(g * scale.to(g.dtype) for g in grads))


def zero_order(
    distribution: Distribution,
    method: Method = "naive",
    argnums: int | Sequence[int] = 0,
    num_samples: int = 1,
    sigma: float = 1.0,
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Give a scalar function zero-order (evolution-strategy) gradients.

    The decorated ``fn(*args, **kwargs)`` must return a scalar tensor. Its value is computed
    normally (without autograd); gradients with respect to the positional arguments in
    ``argnums`` (tensors or trees of tensors) are estimated when back-propagated, from
    ``num_samples`` fresh noise draws of scale ``sigma`` (see the module documentation for
    ``method``). ``distribution`` is a :mod:`torch.distributions` object or any
    ``sample_shape -> Tensor`` callable; it should have zero mean and unit variance.
    Other inputs receive no gradient.

    >>> import torch
    >>> def rademacher(shape):               # random signs: zero mean, unit variance
    ...     return torch.randint(0, 2, shape) * 2.0 - 1.0
    >>> @zero_order(rademacher, method="antithetic")
    ... def f(x):
    ...     return (3.0 * x).sum()           # linear, 1-d: the estimate is exact
    >>> x = torch.tensor([1.0], requires_grad=True)
    >>> f(x).backward()
    >>> x.grad
    tensor([3.])
    """
    sample = _sampler(distribution)
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma: expected a finite positive number, got {sigma}")
    numbers = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not numbers or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in numbers):
        raise ValueError(f"argnums: expected non-negative ints, got {argnums!r}")
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"argnums: duplicate indices in {numbers}")

    def decorator(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if not callable(fn):
            raise TypeError(f"zero_order must decorate a callable, got {type(fn).__name__}")
        name = getattr(fn, "__name__", "fn")

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> torch.Tensor:
            if max(numbers) >= len(args):
                raise ValueError(
                    f"{name}: argnums {numbers} refer to positional arguments that were not "
                    f"given ({len(args)} positional arguments)"
                )
            specs, counts, params = [], [], []
            for index in numbers:
                leaves, spec = flatten_tensors(args[index], f"argument {index} (in argnums)")
                specs.append(spec)
                counts.append(len(leaves))
                params.extend(leaves)
            detached = [p.detach() for p in params]
            frozen_args = list(args)
            for index in numbers:
                frozen_args[index] = tree_map(torch.Tensor.detach, args[index])

            def evaluate(values: list[torch.Tensor]) -> torch.Tensor:
                call_args = list(frozen_args)
                start = 0
                for index, spec, count in zip(numbers, specs, counts):
                    call_args[index] = tree_unflatten(spec, values[start : start + count])
                    start += count
                return fn(*call_args, **kwargs)

            with torch.no_grad():
                value = _check_scalar(evaluate(detached), name)
            if not (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
                return value
            estimator = _Estimator(
                evaluate, sample, method, num_samples, sigma, detached, value.detach().reshape(())
            )
            return _ZeroOrderFunction.apply(estimator, *params).reshape(value.shape)

        return wrapped

    return decorator
