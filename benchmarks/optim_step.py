"""Median optimizer step times: optiquant vs torch.optim (foreach, fused) vs torchopt.

Run: ``python benchmarks/optim_step.py`` (torchopt is measured when installed).
Shapes: (a) 100 tensors totalling 1M parameters, (b) one tensor of 10M parameters.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import Prepared, machine_line, median_times, print_table

import optiquant as oq

HAS_TORCHOPT = importlib.util.find_spec("torchopt") is not None


def make_tensors(shape: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if shape == "a":
        return [torch.randn(10_000, generator=gen) for _ in range(100)]
    return [torch.randn(10_000_000, generator=gen)]


def class_step(
    opt_cls: Callable[..., torch.optim.Optimizer], shape: str, **kw
) -> Callable[[], object]:
    params = [torch.nn.Parameter(t.clone()) for t in make_tensors(shape)]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    opt = opt_cls(params, **kw)
    return opt.step


def functional_step(
    make_tx: Callable[[], oq.GradientTransformation], shape: str, *, one_call: bool = False
) -> Callable[[], object]:
    """A functional in-place step: ``update`` + ``apply_updates``, or ``update_and_apply``."""
    params = make_tensors(shape)
    grads = [torch.randn_like(p) * 1e-2 for p in params]
    buffers = [g.clone() for g in grads]
    tx = make_tx()
    state = [tx.init(params)]

    def step() -> None:
        if one_call:
            _, state[0] = oq.update_and_apply(tx, buffers, state[0], params)
        else:
            updates, state[0] = tx.update(buffers, state[0], params, inplace=True)
            oq.apply_updates(params, updates, inplace=True)

    return fresh_gradients(step, buffers, grads)


def fresh_gradients(
    step: Callable[[], object], buffers: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]
) -> Prepared:
    """``step`` with its gradient buffers refilled, untimed, before each call.

    An in-place update may overwrite the gradients it is given (a training loop hands
    it new ones every step); fed back as gradients, updates shrink into denormal
    numbers within a few hundred steps, which slows every kernel down.
    """
    return Prepared(step, lambda: torch._foreach_copy_(list(buffers), list(grads)))


def torchopt_step(shape: str) -> Callable[[], object]:
    import torchopt

    params = tuple(make_tensors(shape))
    grads = tuple(torch.randn_like(p) * 1e-2 for p in params)
    tx = torchopt.adam(lr=1e-3)
    state = [tx.init(params)]
    buffers = tuple(g.clone() for g in grads)

    def step() -> None:
        updates, state[0] = tx.update(buffers, state[0], params=params, inplace=True)
        torchopt.apply_updates(params, updates, inplace=True)

    return fresh_gradients(step, buffers, grads)


def unrolled(shape: str, library: str, steps: int = 5) -> Callable[[], object]:
    base = make_tensors(shape)
    grads = [torch.randn_like(p) * 1e-2 for p in base]
    weights = [torch.randn_like(p) for p in base]
    if library == "torchopt":
        import torchopt

        tx = torchopt.adam(lr=1e-3, eps_root=1e-8)
        apply = torchopt.apply_updates
    else:
        tx = oq.adam(lr=1e-3)
        apply = oq.apply_updates

    def run() -> None:
        params = tuple(p.clone().requires_grad_(True) for p in base)
        start = params
        state = tx.init(params)
        for _ in range(steps):
            g = tuple(gi * pi for gi, pi in zip(grads, params))  # gradients that depend on params
            updates, state = tx.update(g, state, params=params, inplace=False)
            params = apply(params, updates, inplace=False)
        loss = sum((w * p).sum() for w, p in zip(weights, params))
        torch.autograd.grad(loss, start)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_line()}\n")
    for shape, label in (("a", "(a) 100 tensors, 1M params"), ("b", "(b) one 10M tensor")):
        numel = sum(t.numel() for t in make_tensors(shape))
        variants: dict[str, Callable[[], object]] = {
            "torch.optim.Adam(foreach=True)": class_step(
                torch.optim.Adam, shape, lr=1e-3, foreach=True
            ),
            "torch.optim.Adam(fused=True)": class_step(
                torch.optim.Adam, shape, lr=1e-3, fused=True
            ),
            "optiquant.Adam (class)": class_step(oq.Adam, shape, lr=1e-3),
            "optiquant.adam (functional, inplace)": functional_step(lambda: oq.adam(1e-3), shape),
            "optiquant.update_and_apply(adam) (functional, inplace, one call)": functional_step(
                lambda: oq.adam(1e-3), shape, one_call=True
            ),
            "optiquant chain(scale_by_adam, scale) (foreach)": functional_step(
                lambda: oq.chain(oq.scale_by_adam(), oq.scale(-1e-3)), shape
            ),
        }
        if HAS_TORCHOPT:
            variants["torchopt.adam (functional, inplace)"] = torchopt_step(shape)
        times = median_times(variants, repeats=args.repeats)
        fused = times["torch.optim.Adam(fused=True)"]
        foreach = times["torch.optim.Adam(foreach=True)"]
        rows = []
        for name, t in times.items():
            gbps = 7 * 4 * numel / t / 1e9
            rows.append(
                [name, f"{t * 1e3:.2f}", f"{t / fused:.2f}", f"{t / foreach:.2f}", f"{gbps:.1f}"]
            )
        print_table(
            f"Adam step, {label}",
            ["variant", "median ms", "vs fused", "vs foreach", "GB/s (7 passes)"],
            rows,
        )
        if not HAS_TORCHOPT:
            print("torchopt: skipped (not installed; pip install torchopt)")
        print()

        others = [
            (
                "SGD momentum=0.9",
                torch.optim.SGD,
                oq.SGD,
                oq.sgd,
                {"lr": 1e-2, "momentum": 0.9},
                True,
            ),
            (
                "AdamW",
                torch.optim.AdamW,
                oq.AdamW,
                oq.adamw,
                {"lr": 1e-3, "weight_decay": 0.01},
                True,
            ),
            ("Adagrad", torch.optim.Adagrad, oq.Adagrad, oq.adagrad, dict(lr=1e-2), True),
            ("RMSprop", torch.optim.RMSprop, oq.RMSProp, oq.rmsprop, dict(lr=1e-2), False),
            ("Adamax", torch.optim.Adamax, oq.Adamax, oq.adamax, dict(lr=1e-3), False),
            ("RAdam", torch.optim.RAdam, oq.RAdam, oq.radam, dict(lr=1e-3), False),
            ("NAdam", torch.optim.NAdam, oq.NAdam, oq.nadam, dict(lr=1e-3), False),
        ]
        rows = []
        for name, torch_cls, our_cls, alias, kw, has_fused in others:
            v = {
                "foreach": class_step(torch_cls, shape, foreach=True, **kw),
                "optiquant": class_step(our_cls, shape, **kw),
                "functional": functional_step(
                    lambda alias=alias, kw=kw: alias(**kw), shape, one_call=True
                ),
            }
            if has_fused:
                v["fused"] = class_step(torch_cls, shape, fused=True, **kw)
            t = median_times(v, repeats=max(5, args.repeats // 2))
            best = min(t["foreach"], t.get("fused", float("inf")))
            rows.append(
                [
                    name,
                    f"{t['foreach'] * 1e3:.2f}",
                    f"{t['fused'] * 1e3:.2f}" if "fused" in t else "n/a",
                    f"{t['optiquant'] * 1e3:.2f}",
                    f"{t['optiquant'] / best:.2f}",
                    f"{t['functional'] * 1e3:.2f}",
                    f"{t['functional'] / best:.2f}",
                ]
            )
        print_table(
            f"Other optimizers, {label}",
            [
                "optimizer",
                "torch foreach ms",
                "torch fused ms",
                "optiquant class ms",
                "class vs fastest torch",
                "optiquant update_and_apply ms",
                "functional vs fastest torch",
            ],
            rows,
        )
        print()

        v = {"optiquant adam(inplace=False) x5 + backward": unrolled(shape, "optiquant")}
        if HAS_TORCHOPT:
            v["torchopt adam(inplace=False) x5 + backward"] = unrolled(shape, "torchopt")
        t = median_times(v, repeats=max(5, args.repeats // 3), warmup=1)
        ref = t.get("torchopt adam(inplace=False) x5 + backward")
        rows = [[n, f"{x * 1e3:.1f}", f"{x / ref:.2f}" if ref else "n/a"] for n, x in t.items()]
        print_table(
            f"Differentiable 5-step unrolled Adam, {label}",
            ["variant", "median ms", "vs torchopt"],
            rows,
        )
        print()


if __name__ == "__main__":
    main()
