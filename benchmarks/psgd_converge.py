"""Convergence in steps: PSGD vs Adam on scikit-learn's digits (an MLP) and Rosenbrock (100-D, 2-D).

Every optimizer gets the same learning-rate shape, a cosine decay to 0 over the budget,
and its peak is tuned on a small grid (printed). Adam runs the budget; the question is
how many steps each PSGD variant needs to reach Adam's final training loss (the target
is met when <= 70% of Adam's steps). ``--constant`` uses constant learning rates instead.

* digits: 1437 training images, MLP 64-256-256-10 (tanh), minibatches of 64 in a fixed
  order, full training cross-entropy every 10 steps; Adam budget 300 steps.
* Rosenbrock: f(x) = sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2 in 100 dimensions,
  from (-1.2, 1, -1.2, 1, ...), deterministic gradients; Adam budget 3000 steps.
  Hessian-fitted XMat, LRA and Kron get Hvps from ``hessian_helper`` (a probe every
  step), peak learning rates 0.3, 1 and 2, and no update clipping (a Newton step
  should not be clipped).
* Rosenbrock 2-D: the same function from (-1.2, 1), Adam budget 1000 steps (grid 0.01-3),
  Hessian-fitted XMat and LRA (peaks 0.3, 1, 2). In two dimensions both hold the whole
  Hessian (XMat's diagonal and anti-diagonal, LRA's rank covers it).

Writes ``benchmarks/psgd_converge.png`` and prints a markdown table.

    python benchmarks/psgd_converge.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

import optiquant as oq
from optiquant.optim.schedule import cosine_decay_schedule
from optiquant.psgd import hessian_helper, kron, low_rank_approximation, xmat

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- problems


def digits_problem():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=gen)
    x, y = x[perm][:1437], y[perm][:1437]
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.Tanh(),
        torch.nn.Linear(256, 256),
        torch.nn.Tanh(),
        torch.nn.Linear(256, 10),
    )
    names = [n for n, _ in model.named_parameters()]
    init = [p.detach().clone() for p in model.parameters()]

    def loss_fn(params, xb, yb):
        out = torch.func.functional_call(model, dict(zip(names, params)), (xb,))
        return torch.nn.functional.cross_entropy(out, yb)

    order = torch.randperm(len(x), generator=gen)

    def batch(step: int):
        idx = order[(step * 64) % (len(x) - 64) :][:64]
        return x[idx], y[idx]

    def full_loss(params) -> float:
        with torch.no_grad():
            return float(loss_fn(params, x, y))

    return init, loss_fn, batch, full_loss


def rosenbrock(z: torch.Tensor) -> torch.Tensor:
    return torch.sum(100.0 * (z[1:] - z[:-1] ** 2) ** 2 + (1.0 - z[:-1]) ** 2)


# ----------------------------------------------------------------------------- runners


def run_digits(make_opt: Callable[[float], oq.GradientTransformation], lr: float, steps: int):
    params, loss_fn, batch, full_loss = digits_problem()
    opt = make_opt(lr)
    state = opt.init(params)
    curve = [(0, full_loss(params))]
    for step in range(steps):
        xb, yb = batch(step)
        grads = torch.func.grad(loss_fn)(params, xb, yb)
        updates, state = opt.update(list(grads), state, params)
        params = oq.apply_updates(params, updates)
        if (step + 1) % 10 == 0:
            value = full_loss(params)
            curve.append((step + 1, value if math.isfinite(value) else float("inf")))
    return curve


def run_rosen(make_opt, lr: float, steps: int, hessian: bool, dim: int = 100):
    x = torch.tensor([-1.2, 1.0] * (dim // 2), dtype=torch.float64)
    opt = make_opt(lr)
    state = opt.init(x)
    gen = torch.Generator().manual_seed(0)
    curve = []
    for step in range(steps):
        if hessian:
            loss, g, hv, v, upd = hessian_helper(gen, step, rosenbrock, x)
            updates, state = opt.update(g, state, x, Hvp=hv, vector=v, update_preconditioner=upd)
        else:
            loss, g = rosenbrock(x), torch.func.grad(rosenbrock)(x)
            updates, state = opt.update(g, state, x)
        value = float(loss)
        curve.append((step, value if math.isfinite(value) else float("inf")))
        if not math.isfinite(value):
            break
        x = oq.apply_updates(x, updates)
    return curve


def steps_to(curve, target: float) -> int | None:
    for step, value in curve:
        if value <= target:
            return step
    return None


def pick_best(runs: dict[float, list], target: float, budget: int):
    """(best lr, first step at the target or None, share of the budget as text)."""
    best = min(runs, key=lambda lr: (steps_to(runs[lr], target) or 10**9, runs[lr][-1][1]))
    hit = steps_to(runs[best], target)
    return best, hit, (f"{hit / budget:.0%}" if hit is not None else "not reached")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller grids (a smoke test)")
    parser.add_argument("--constant", action="store_true", help="constant learning rates")
    args = parser.parse_args(argv)

    def sched(lr: float, budget: int):
        return lr if args.constant else cosine_decay_schedule(lr, budget)

    torch.set_num_threads(1)
    t0 = time.time()
    rows = []
    curves: dict[str, dict[str, list]] = {"digits": {}, "rosenbrock-100": {}, "rosenbrock-2": {}}

    def report(problem: str, name: str, runs: dict[float, list], target: float, budget: int):
        """Keep the tuned run of one optimizer: its curve, its table row, a progress line."""
        best, hit, ratio = pick_best(runs, target, budget)
        curves[problem][f"{name} lr={best:g}"] = runs[best]
        rows.append((problem, name, best, hit, runs[best][-1][1], ratio))
        print(f"{problem} {name}: lr {best:g}, {hit} steps ({ratio}) [{time.time() - t0:.0f}s]",
              flush=True)  # fmt: skip

    # digits ------------------------------------------------------------------
    d_steps = 300
    grid = [1e-3, 3e-3, 1e-2] if args.quick else [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    adam_runs = {
        lr: run_digits(lambda lr: oq.adam(lr=sched(lr, d_steps)), lr, d_steps) for lr in grid
    }
    adam_lr = min(adam_runs, key=lambda lr: adam_runs[lr][-1][1])
    target = adam_runs[adam_lr][-1][1]
    curves["digits"][f"Adam lr={adam_lr:g}"] = adam_runs[adam_lr]
    rows.append(("digits", "Adam", adam_lr, d_steps, target, "-"))
    digits_psgd = {
        "Kron (eq)": lambda lr: kron(learning_rate=sched(lr, d_steps)),
        "Kron (quad)": lambda lr: kron(learning_rate=sched(lr, d_steps), geometry="quad"),
    }
    for name, make in digits_psgd.items():
        runs = {lr: run_digits(make, lr, d_steps) for lr in grid}
        report("digits", name, runs, target, d_steps)

    # Rosenbrock --------------------------------------------------------------
    r_steps = 3000
    grid = [0.1, 0.3, 1.0] if args.quick else [0.03, 0.1, 0.3, 1.0, 3.0]
    adam_runs = {
        lr: run_rosen(lambda lr: oq.adam(lr=sched(lr, r_steps)), lr, r_steps, False) for lr in grid
    }
    adam_lr = min(adam_runs, key=lambda lr: adam_runs[lr][-1][1])
    target = adam_runs[adam_lr][-1][1]
    curves["rosenbrock-100"][f"Adam lr={adam_lr:g}"] = adam_runs[adam_lr]
    rows.append(("rosenbrock-100", "Adam", adam_lr, r_steps, target, "-"))
    print(
        f"rosenbrock Adam: lr {adam_lr:g}, final {target:.3g} [{time.time() - t0:.0f}s]", flush=True
    )
    rosen_psgd = {
        "Kron whitening (dense 100x100)": (
            lambda lr: kron(learning_rate=sched(lr, r_steps), min_ndim_triangular=1),
            False,
            [3e-3, 1e-2, 3e-2, 1e-1],
        ),
        "Kron Hessian, quad (dense 100x100)": (
            lambda lr: kron(
                learning_rate=sched(lr, r_steps),
                geometry="quad",
                min_ndim_triangular=1,
                precond_init_scale=None,
                precond_lr=0.5,
                clip_update_rms=None,
            ),
            True,
            [0.3, 1.0, 2.0],
        ),
        "XMat Hessian": (
            lambda lr: xmat(learning_rate=sched(lr, r_steps)),
            True,
            [0.3, 1.0, 2.0],
        ),
        "LRA Hessian": (
            lambda lr: low_rank_approximation(learning_rate=sched(lr, r_steps)),
            True,
            [0.3, 1.0, 2.0],
        ),
    }
    for name, (make, hessian, lrs) in rosen_psgd.items():
        if args.quick:
            lrs = lrs[-2:]
        runs = {lr: run_rosen(make, lr, r_steps, hessian) for lr in lrs}
        report("rosenbrock-100", name, runs, target, r_steps)

    # Rosenbrock 2-D: the classic valley, where XMat and LRA can hold the whole Hessian
    r2_steps = 1000
    grid = [0.3, 1.0] if args.quick else [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
    adam_runs = {
        lr: run_rosen(lambda lr: oq.adam(lr=sched(lr, r2_steps)), lr, r2_steps, False, dim=2)
        for lr in grid
    }
    adam_lr = min(adam_runs, key=lambda lr: adam_runs[lr][-1][1])
    target = adam_runs[adam_lr][-1][1]
    curves["rosenbrock-2"][f"Adam lr={adam_lr:g}"] = adam_runs[adam_lr]
    rows.append(("rosenbrock-2", "Adam", adam_lr, r2_steps, target, "-"))
    rosen2_psgd = {
        "XMat Hessian": lambda lr: xmat(learning_rate=sched(lr, r2_steps)),
        "LRA Hessian": lambda lr: low_rank_approximation(learning_rate=sched(lr, r2_steps)),
    }
    for name, make in rosen2_psgd.items():
        lrs = [1.0, 2.0] if args.quick else [0.3, 1.0, 2.0]
        runs = {lr: run_rosen(make, lr, r2_steps, True, dim=2) for lr in lrs}
        report("rosenbrock-2", name, runs, target, r2_steps)

    print()
    print(
        "| problem | optimizer | tuned lr | steps to Adam's final loss | final loss "
        "| share of Adam's steps |"
    )
    print("|---|---|---|---|---|---|")
    for problem, name, lr, hit, final, ratio in rows:
        shown = "budget" if name == "Adam" else ("not reached" if hit is None else hit)
        print(f"| {problem} | {name} | {lr:g} | {shown} | {final:.3g} | {ratio} |")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dev dependency
        print("matplotlib missing: no plot")
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.5))
    for ax, (problem, series) in zip(axes, curves.items()):
        for label, curve in series.items():
            steps, values = zip(*curve)
            ax.semilogy(steps, values, label=label)
        ax.set_title(problem)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "psgd_converge.png", dpi=110)
    print(f"plot: {HERE / 'psgd_converge.png'}")


if __name__ == "__main__":
    main()
