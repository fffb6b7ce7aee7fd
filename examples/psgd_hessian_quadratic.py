"""Hessian-fitted PSGD (XMat, LRA, Affine) on an ill-conditioned quadratic, vs Adam.

Each optimizer gets Hessian-vector products from ``hessian_helper``; the fitted
preconditioner approaches the best approximation of |H|^-1 in its family, so a learning
rate of 1 behaves like Newton's method where the family can represent H. This H is a
dense rotation: LRA and Affine capture it, XMat (diagonal + anti-diagonal only) cannot.

    python examples/psgd_hessian_quadratic.py
"""

from __future__ import annotations

import torch

import optiquant as oq
from optiquant.psgd import affine, hessian_helper, low_rank_approximation, xmat


def main() -> dict[str, int]:
    torch.manual_seed(0)
    n = 16
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    h = (q * torch.logspace(0, 2, n, dtype=torch.float64)) @ q.T  # condition number 100
    target = torch.randn(n, dtype=torch.float64)

    def loss_fn(x):
        d = x - target
        return 0.5 * d @ (h @ d)

    results = {}
    for name, opt in [
        ("xmat", xmat(learning_rate=1.0, b1=0.0)),
        ("lra", low_rank_approximation(learning_rate=1.0, b1=0.0, precond_lr=0.3)),
        ("affine", affine(learning_rate=1.0, b1=0.0, precond_lr=0.5)),
        ("adam", oq.adam(lr=0.1)),
    ]:
        x = torch.zeros(n, dtype=torch.float64)
        state, gen = opt.init(x), torch.Generator().manual_seed(0)
        for step in range(2000):
            if name == "adam":
                loss, g = loss_fn(x), torch.func.grad(loss_fn)(x)
                updates, state = opt.update(g, state, x)
            else:
                loss, g, hv, v, upd = hessian_helper(gen, step, loss_fn, x)
                updates, state = opt.update(
                    g, state, x, Hvp=hv, vector=v, update_preconditioner=upd
                )
            if loss < 1e-6:
                break
            x = oq.apply_updates(x, updates)
        reached = bool(loss < 1e-6)
        results[name] = step if reached else -1
        print(
            f"{name:7s} "
            + (
                f"reached loss < 1e-6 after {step} steps"
                if reached
                else f"did not reach 1e-6 in 2000 steps (loss {float(loss):.3g})"
            )
        )
    return results


if __name__ == "__main__":
    main()
