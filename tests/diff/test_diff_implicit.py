"""custom_root: hypergradients by the implicit function theorem against closed forms and a
dense solve, for every linear solver, in float64.

Ridge regression: w*(lam) = (X^T X / n + lam I)^-1 X^T y / n, so dw*/dlam = -H^-1 w* and the
validation-loss hypergradient is -g_val^T H^-1 w*. The solvers run to relative residual
1e-13 (CG) or ~1e-13 (Neumann, from its contraction factor), so 1e-8 relative agreement
leaves a wide margin for float64 rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
from diff_helpers import F64

import optiquant.diff as diff

N, D = 40, 5


def _problem() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen, dtype=F64)
    y = x @ torch.randn(D, generator=gen, dtype=F64) + 0.3 * torch.randn(
        N, generator=gen, dtype=F64
    )
    xv = torch.randn(N, D, generator=gen, dtype=F64)
    yv = xv @ torch.randn(D, generator=gen, dtype=F64)
    return x, y, xv, yv


def _neumann_solver(hessian: torch.Tensor, target: float = 1e-14) -> diff.linear_solve.LinearSolver:
    """Neumann series with step 1/lambda_max: contraction 1 - lambda_min/lambda_max."""
    eig = torch.linalg.eigvalsh(hessian)
    contraction = 1 - float(eig[0] / eig[-1])
    terms = math.ceil(math.log(target) / math.log(contraction))
    return diff.solve_inv(ns=True, maxiter=terms, alpha=1 / float(eig[-1]))


def _solvers(hessian: torch.Tensor) -> dict[str, diff.linear_solve.LinearSolver]:
    return {
        "cg": diff.solve_cg(rtol=1e-13),
        "normal_cg": diff.solve_normal_cg(rtol=1e-13),
        "inv": diff.solve_inv(),
        "neumann": _neumann_solver(hessian),
    }


@pytest.mark.parametrize("solver_name", ["cg", "normal_cg", "inv", "neumann"])
def test_ridge_hypergradient_matches_closed_form(solver_name: str) -> None:
    x, y, xv, yv = _problem()
    lam0 = 0.7
    hessian = x.T @ x / N + lam0 * torch.eye(D, dtype=F64)
    solver = _solvers(hessian)[solver_name]

    def stationarity(w: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return x.T @ (x @ w - y) / N + lam * w

    @diff.custom_root(stationarity, argnums=1, solve=solver)
    def ridge(w0: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(x.T @ x / N + lam * torch.eye(D, dtype=F64), x.T @ y / N)

    lam = torch.tensor(lam0, dtype=F64, requires_grad=True)
    w = ridge(torch.zeros(D, dtype=F64), lam)
    val_loss = 0.5 * ((xv @ w - yv) ** 2).mean()
    (hypergrad,) = torch.autograd.grad(val_loss, lam)

    w_star = torch.linalg.solve(hessian, x.T @ y / N)
    g_val = xv.T @ (xv @ w_star - yv) / N
    expected = -g_val @ torch.linalg.solve(hessian, w_star)
    assert abs(float(hypergrad) - float(expected)) <= 1e-8 * abs(float(expected))


def _coupled_problem() -> tuple[torch.Tensor, ...]:
    x, y, _, _ = _problem()
    x = x + 2.0  # a shifted design couples the weights and the bias strongly
    return x, y


def _objective(
    params: dict[str, torch.Tensor],
    meta: tuple[torch.Tensor, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    lam_w, lam_b = meta
    residual = x @ params["w"] + params["b"] - y
    penalty = lam_w * (params["w"] ** 2).sum() + lam_b * params["b"] ** 2
    return 0.5 * (residual**2).mean() + 0.5 * penalty


def _grad_vector(
    theta: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """The inner gradient over the concatenated vector theta = (w, b)."""
    grads = torch.func.grad(_objective)({"w": theta[:D], "b": theta[D]}, (lam[0], lam[1]), x, y)
    return torch.cat([grads["w"], grads["b"].reshape(1)])


def _exact_inner(
    lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inner solution (the gradient is affine in theta) and the inner Hessian."""
    zero = torch.zeros(D + 1, dtype=F64)
    hessian = torch.func.jacrev(_grad_vector)(zero, lam, x, y)
    return torch.linalg.solve(hessian, -_grad_vector(zero, lam, x, y)), hessian


def _dense_hypergradient(
    x: torch.Tensor,
    y: torch.Tensor,
    lam: torch.Tensor,
    outer_weights: torch.Tensor,
    *,
    block_diagonal: bool = False,
) -> torch.Tensor:
    """-v^T H^-1 B with dense Jacobians (optionally dropping H's off-diagonal blocks)."""
    theta, hessian = _exact_inner(lam, x, y)
    b_matrix = torch.func.jacrev(_grad_vector, argnums=1)(theta, lam, x, y)
    if block_diagonal:
        hessian = torch.block_diag(hessian[:D, :D], hessian[D:, D:])
    return -outer_weights @ torch.linalg.solve(hessian, b_matrix)


@pytest.mark.parametrize("solver_name", ["cg", "normal_cg", "inv", "neumann"])
def test_multi_leaf_tree_matches_dense_solve(solver_name: str) -> None:
    x, y = _coupled_problem()
    lam = torch.tensor([0.3, 0.05], dtype=F64)
    meta = (lam[0].clone().requires_grad_(), lam[1].clone().requires_grad_())
    outer_weights = torch.linspace(-1.0, 1.0, D + 1, dtype=F64)
    solver = _solvers(_exact_inner(lam, x, y)[1])[solver_name]

    def optimality(
        params: dict[str, torch.Tensor],
        meta: tuple[torch.Tensor, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        return torch.func.grad(_objective)(params, meta, x, y)

    @diff.custom_root(optimality, argnums=1, solve=solver)
    def fit(
        init: dict[str, torch.Tensor],
        meta: tuple[torch.Tensor, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        theta, _ = _exact_inner(torch.stack(meta), x, y)
        return {"w": theta[:D], "b": theta[D]}

    init = {"w": torch.zeros(D, dtype=F64), "b": torch.zeros((), dtype=F64)}
    params = fit(init, meta, x, y)
    outer = (outer_weights[:D] * params["w"]).sum() + outer_weights[D] * params["b"]
    grads = torch.stack(torch.autograd.grad(outer, meta))

    expected = _dense_hypergradient(x, y, lam, outer_weights)
    torch.testing.assert_close(grads, expected, rtol=1e-8, atol=0)
    # The coupling matters: ignoring the off-diagonal blocks gives another answer.
    wrong = _dense_hypergradient(x, y, lam, outer_weights, block_diagonal=True)
    assert float((wrong - expected).abs().max()) > 1e-2 * float(expected.abs().max())


def test_scalar_solution_and_argument() -> None:
    """0-d tensors: argmin_x 0.5 a x^2 - b x = b / a, dx/da = -b / a^2, dx/db = 1 / a."""

    def optimality(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * x - b

    for solver in (diff.solve_cg(), diff.solve_normal_cg(), diff.solve_inv()):

        @diff.custom_root(optimality, argnums=(1, 2), solve=solver)
        def argmin(x0: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return b / a

        a = torch.tensor(2.0, dtype=F64, requires_grad=True)
        b = torch.tensor(3.0, dtype=F64, requires_grad=True)
        da, db = torch.autograd.grad(argmin(torch.tensor(0.0, dtype=F64), a, b), (a, b))
        torch.testing.assert_close(da, torch.tensor(-0.75, dtype=F64), rtol=1e-10, atol=0)
        torch.testing.assert_close(db, torch.tensor(0.5, dtype=F64), rtol=1e-10, atol=0)


def test_has_aux_kwargs_and_no_grad() -> None:
    def optimality(x: torch.Tensor, a: torch.Tensor, *, shift: float) -> torch.Tensor:
        return x - a - shift

    @diff.custom_root(optimality, argnums=1, has_aux=True, solve=diff.solve_cg())
    def solve(x0: torch.Tensor, a: torch.Tensor, *, shift: float) -> tuple[torch.Tensor, str]:
        assert not a.requires_grad  # the solver sees detached arguments
        return a + shift, "converged"

    a = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    x, aux = solve(torch.zeros(2, dtype=F64), a, shift=0.5)
    assert aux == "converged"
    torch.testing.assert_close(x.detach(), a.detach() + 0.5)
    (g,) = torch.autograd.grad((x * torch.tensor([3.0, 4.0], dtype=F64)).sum(), a)
    torch.testing.assert_close(g, torch.tensor([3.0, 4.0], dtype=F64))
    with torch.no_grad():
        x, _ = solve(torch.zeros(2, dtype=F64), a, shift=0.5)
    assert x.grad_fn is None


def test_bad_input() -> None:
    def good(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return x - a

    with pytest.raises(ValueError, match="argnums: 0"):
        diff.custom_root(good, argnums=0)
    with pytest.raises(TypeError, match="optimality_fn: expected a callable"):
        diff.custom_root("x - a", argnums=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="solve"):
        diff.custom_root(good, argnums=1, solve=3)  # type: ignore[arg-type]

    @diff.custom_root(good, argnums=2)
    def needs_two(x0: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a.clone()

    a = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="argnums"):
        needs_two(torch.zeros(2), a)

    @diff.custom_root(good, argnums=1)
    def ok(x0: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a.clone()

    with pytest.raises(TypeError, match="argument 1"):
        ok(torch.zeros(2), [a, "not a tensor"])

    def wrong_structure(x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x - a, x

    @diff.custom_root(wrong_structure, argnums=1)
    def bad_structure(x0: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a.clone()

    with pytest.raises(ValueError, match="same structure as the solution"):
        bad_structure(torch.zeros(2), a).sum().backward()

    def wrong_shape(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (x - a).sum()

    @diff.custom_root(wrong_shape, argnums=1)
    def bad_shape(x0: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a.clone()

    with pytest.raises(ValueError, match="shape"):
        bad_shape(torch.zeros(2), a).sum().backward()

    @diff.custom_root(good, argnums=1)
    def not_tensor(x0: torch.Tensor, a: torch.Tensor) -> str:
        return "done"

    with pytest.raises(TypeError, match="solution"):
        not_tensor(torch.zeros(2), a)
