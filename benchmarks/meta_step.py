"""MAML outer step: optiquant.diff.MetaAdam against torchopt.MetaAdam and higher, same run.

One outer step = for each task of a batch: 5 differentiable Adam steps on the support set of
an MLP, the query loss, its backward pass to the initial weights (accumulated), and a reset
of the network and optimizer state. The variants are interleaved round-robin; the table
reports median process CPU time (robust to other load on a shared machine) and minimum
wall time per outer step, and the ratio of optiquant to each peer. optiquant and torchopt
run with eps_root=1e-8 (torchopt's NaN-free setting), higher with its own Adam.

Before timing, the meta-gradients are compared in float64 from the same weights and tasks:

* optiquant.MetaAdam vs torchopt.MetaAdam, both with eps_root=1e-8 (torchopt's default
  eps_root=0 gives NaN meta-gradients when a gradient entry is exactly zero, e.g. at a dead
  ReLU). Tolerance 1e-4 relative: torchopt evaluates Adam's bias corrections in float32
  even for float64 tensors (relative error ~1e-6 per step), optiquant in float64.
* higher's DifferentiableAdam implements the older Adam formula
  ``p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`` (eps not bias-corrected)
  and zeroes the gradient through v where v == 0. optiquant.MetaOptimizer runs the same
  formula as a small custom transformation (``higher_style_adam`` below) for this check;
  it must agree to 1e-9 relative. The timed optiquant row uses MetaAdam itself.

Peers that are not installed are reported as skipped. Run:
``python benchmarks/meta_step.py [--reps 15] [--tasks 4] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

import optiquant.diff as diff
from optiquant.optim.base import GradientTransformation

try:
    import torchopt
except ImportError:  # a peer: optional
    torchopt = None
try:
    import higher
except ImportError:  # a peer: optional
    higher = None

INNER_STEPS = 5
LR = 1e-2
SIZES = (64, 256, 256, 10)
BATCH = 64

Task = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def make_net(dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(SIZES)):
        layers.append(nn.Linear(a, b))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(dtype)


def make_tasks(n: int, dtype: torch.dtype, seed: int = 1) -> list[Task]:
    gen = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(n):
        centers = torch.randn(SIZES[-1], SIZES[0], generator=gen, dtype=dtype)
        pairs = []
        for _ in range(2):  # support and query sets
            labels = torch.randint(0, SIZES[-1], (BATCH,), generator=gen)
            pairs += [
                centers[labels] + torch.randn(BATCH, SIZES[0], generator=gen, dtype=dtype),
                labels,
            ]
        tasks.append((pairs[0], pairs[1], pairs[2], pairs[3]))
    return tasks


loss_fn = nn.functional.cross_entropy


# --- optiquant -------------------------------------------------------------------------
def optiquant_step(net: nn.Module, opt: diff.MetaOptimizer, tasks: list[Task]) -> None:
    net_state = diff.extract_state_dict(net, with_buffers=False)
    opt_state = diff.extract_state_dict(opt)
    for xs, ys, xq, yq in tasks:
        for _ in range(INNER_STEPS):
            opt.step(loss_fn(net(xs), ys))
        loss_fn(net(xq), yq).backward()
        diff.recover_state_dict(net, net_state)
        diff.recover_state_dict(opt, opt_state)


class _AdamState(NamedTuple):
    mu: list[torch.Tensor]
    nu: list[torch.Tensor]
    count: int


def adam_variant(
    lr: float,
    *,
    eps_root: float = 0.0,
    float32_bias: bool = False,
    higher_formula: bool = False,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> GradientTransformation:
    """Adam written out as a differentiable transformation, in a peer's exact variant.

    ``float32_bias`` computes the bias corrections ``1 - b**t`` in float32, as torchopt does;
    ``higher_formula`` uses ``lr * sqrt(bc2) / bc1 * m / (sqrt(v) + eps)`` as higher does.
    The square root has a zero derivative at 0 (higher masks the gradient of v == 0).
    """

    def init(params: Any) -> _AdamState:
        zeros = [torch.zeros_like(p) for p in params]
        return _AdamState(zeros, [torch.zeros_like(p) for p in params], 0)

    def update(
        updates: Any, state: _AdamState, params: Any = None, *, inplace: bool = True, **extra: Any
    ) -> tuple[Any, _AdamState]:
        t = state.count + 1
        mu = [b1 * m + (1 - b1) * g for m, g in zip(state.mu, updates)]
        nu = [b2 * v + (1 - b2) * g * g for v, g in zip(state.nu, updates)]
        if float32_bias:  # a float base to the power of an int64 tensor is float32
            bc1, bc2 = (float(1 - pow(b, torch.tensor(t))) for b in (b1, b2))
        else:
            bc1, bc2 = 1 - b1**t, 1 - b2**t
        if higher_formula:
            roots = [_safe_sqrt(v) for v in nu]
            out = [-lr * bc2**0.5 / bc1 * m / (r + eps) for m, r in zip(mu, roots)]
        else:
            out = [-lr * (m / bc1) / (_safe_sqrt(v / bc2 + eps_root) + eps) for m, v in zip(mu, nu)]
        return out, _AdamState(mu, nu, t)

    return GradientTransformation(init, update)


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, 1.0)), 0.0)


def textbook_meta_gradient(tasks: list[Task], eps_root: float) -> torch.Tensor:
    """MAML with Adam written inline on torch.func.functional_call: the float64 oracle."""
    net = make_net(torch.float64)
    names = [name for name, _ in net.named_parameters()]
    theta = list(net.parameters())
    total = [torch.zeros_like(p) for p in theta]
    for xs, ys, xq, yq in tasks:
        params = theta
        mu = [torch.zeros_like(p) for p in params]
        nu = [torch.zeros_like(p) for p in params]
        for t in range(1, INNER_STEPS + 1):
            out = torch.func.functional_call(net, dict(zip(names, params)), (xs,))
            grads = torch.autograd.grad(loss_fn(out, ys), params, create_graph=True)
            mu = [0.9 * m + 0.1 * g for m, g in zip(mu, grads)]
            nu = [0.999 * v + 0.001 * g * g for v, g in zip(nu, grads)]
            bc1, bc2 = 1 - 0.9**t, 1 - 0.999**t
            params = [
                p - LR * (m / bc1) / (_safe_sqrt(v / bc2 + eps_root) + 1e-8)
                for p, m, v in zip(params, mu, nu)
            ]
        out = torch.func.functional_call(net, dict(zip(names, params)), (xq,))
        for acc, g in zip(total, torch.autograd.grad(loss_fn(out, yq), theta)):
            acc += g
    return torch.cat([g.reshape(-1) for g in total])


# --- torchopt --------------------------------------------------------------------------
def torchopt_step(net: nn.Module, opt: Any, tasks: list[Task]) -> None:
    net_state = torchopt.extract_state_dict(net)
    opt_state = torchopt.extract_state_dict(opt)
    for xs, ys, xq, yq in tasks:
        for _ in range(INNER_STEPS):
            opt.step(loss_fn(net(xs), ys))
        loss_fn(net(xq), yq).backward()
        torchopt.recover_state_dict(net, net_state)
        torchopt.recover_state_dict(opt, opt_state)


# --- higher ----------------------------------------------------------------------------
def higher_step(net: nn.Module, opt: torch.optim.Optimizer, tasks: list[Task]) -> None:
    for xs, ys, xq, yq in tasks:
        with higher.innerloop_ctx(net, opt, copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(INNER_STEPS):
                diffopt.step(loss_fn(fnet(xs), ys))
            loss_fn(fnet(xq), yq).backward()


Variant = tuple[str, Callable[[nn.Module], Callable[[list[Task]], None]]]


def variants(eps_root: float) -> list[Variant]:
    def ours(net: nn.Module) -> Callable[[list[Task]], None]:
        opt = diff.MetaAdam(net, lr=LR, eps_root=eps_root)
        return lambda tasks: optiquant_step(net, opt, tasks)

    out: list[Variant] = [("optiquant.MetaAdam", ours)]
    if torchopt is not None:

        def theirs(net: nn.Module) -> Callable[[list[Task]], None]:
            opt = torchopt.MetaAdam(net, lr=LR, eps_root=1e-8)
            return lambda tasks: torchopt_step(net, opt, tasks)

        out.append(("torchopt.MetaAdam", theirs))
    if higher is not None:

        def higher_variant(net: nn.Module) -> Callable[[list[Task]], None]:
            opt = torch.optim.Adam(net.parameters(), lr=LR)
            return lambda tasks: higher_step(net, opt, tasks)

        out.append(("higher DifferentiableAdam", higher_variant))
    return out


def meta_gradient(
    build: Callable[[nn.Module], Callable[[list[Task]], None]], tasks: list[Task]
) -> torch.Tensor:
    net = make_net(torch.float64)
    build(net)(tasks)
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()])


def _with(
    transformation: GradientTransformation,
) -> Callable[[nn.Module], Callable[[list[Task]], None]]:
    def build(net: nn.Module) -> Callable[[list[Task]], None]:
        opt = diff.MetaOptimizer(net, transformation)
        return lambda tasks: optiquant_step(net, opt, tasks)

    return build


def check_meta_gradients(n_tasks: int) -> list[str]:
    tasks = make_tasks(n_tasks, torch.float64)
    lines = []

    def compare(name: str, a: torch.Tensor, b: torch.Tensor, tol: float | None) -> float:
        rel = float((a - b).norm() / b.norm())
        lines.append(f"{name}: relative difference {rel:.1e}" + (f" (<= {tol:.0e})" if tol else ""))
        assert torch.isfinite(a).all(), f"{name}: not finite"
        assert tol is None or rel <= tol, lines[-1]
        return rel

    for eps_root in (0.0, 1e-8):
        compare(
            f"optiquant.MetaAdam(eps_root={eps_root:g}) vs textbook float64 Adam",
            meta_gradient(variants(eps_root)[0][1], tasks),
            textbook_meta_gradient(tasks, eps_root),
            1e-10,
        )
    for name, build in variants(1e-8)[1:]:
        theirs = meta_gradient(build, tasks)
        if name.startswith("torchopt"):
            compare(
                "MetaOptimizer(adam_variant(float32 bias corrections, eps_root=1e-8)) "
                "vs torchopt.MetaAdam",
                meta_gradient(_with(adam_variant(LR, eps_root=1e-8, float32_bias=True)), tasks),
                theirs,
                1e-9,
            )
            compare(
                "(info) optiquant.MetaAdam vs torchopt.MetaAdam, both eps_root=1e-8",
                meta_gradient(variants(1e-8)[0][1], tasks),
                theirs,
                None,
            )
        else:
            compare(
                "MetaOptimizer(adam_variant(higher_formula=True)) vs higher DifferentiableAdam",
                meta_gradient(_with(adam_variant(LR, higher_formula=True)), tasks),
                theirs,
                1e-9,
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads={args.threads}"
    )
    print(
        f"MLP {'-'.join(map(str, SIZES))}, ReLU, float32, {args.tasks} tasks x {INNER_STEPS} "
        "inner Adam "
        f"steps (lr {LR}), batch {BATCH}"
    )
    for line in check_meta_gradients(min(args.tasks, 2)):
        print("check:", line)
    for name, present in (("torchopt", torchopt), ("higher", higher)):
        if present is None:
            print(f"{name}: skipped (not installed)")

    tasks = make_tasks(args.tasks, torch.float32)
    base = make_net(torch.float32)
    runs = []
    for name, build in variants(1e-8):  # the same formula (and work) in every row
        net = copy.deepcopy(base)
        runs.append((name, net, build(net)))
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    wall: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for rep in range(args.reps + 1):
        for name, net, step in runs:
            c0, w0 = time.process_time(), time.perf_counter()
            step(tasks)
            c1, w1 = time.process_time(), time.perf_counter()
            for p in net.parameters():
                p.grad = None
            if rep > 0:  # the first round warms up
                cpu[name].append(1e3 * (c1 - c0))
                wall[name].append(1e3 * (w1 - w0))

    ours = statistics.median(cpu[runs[0][0]])
    ours_wall = min(wall[runs[0][0]])
    print()
    print(
        "| variant | CPU ms (median) | wall ms (min) | optiquant / this (CPU) "
        "| optiquant / this (wall) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, _, _ in runs:
        med, low = statistics.median(cpu[name]), min(wall[name])
        print(f"| {name} | {med:.1f} | {low:.1f} | {ours / med:.2f} | {ours_wall / low:.2f} |")


if __name__ == "__main__":
    main()
