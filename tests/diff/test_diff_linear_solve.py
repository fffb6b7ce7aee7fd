"""Linear solvers and iterative linear algebra on pytrees, against torch.linalg.solve in float64."""

from __future__ import annotations

import pytest
import torch
from diff_helpers import F64

import optiquant.diff as diff
from optiquant.diff import linalg


def _spd(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=gen, dtype=F64)
    return q @ q.T / n + 0.5 * torch.eye(n, dtype=F64)


def _tree_operator(matrix: torch.Tensor):
    """The dense matrix acting on a tree {"a": (2, 2), "b": (3,), "c": ()} (n = 8)."""

    def to_vec(tree: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tree["a"].reshape(-1), tree["b"], tree["c"].reshape(1)])

    def to_tree(v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"a": v[:4].reshape(2, 2), "b": v[4:7], "c": v[7]}

    return (lambda tree: to_tree(matrix @ to_vec(tree))), to_vec, to_tree


SOLVERS = {
    "cg": (lambda: diff.solve_cg(rtol=1e-13), 0.0),
    "normal_cg": (lambda: diff.solve_normal_cg(rtol=1e-13), 0.0),
    "inv": (lambda: diff.solve_inv(), 0.0),
    "neumann": (lambda: diff.solve_inv(ns=True, maxiter=600, alpha=0.2), 0.0),
    "cg-ridge": (lambda: diff.solve_cg(rtol=1e-13, ridge=0.25), 0.25),
    "inv-ridge": (lambda: diff.solve_inv(ridge=0.25), 0.25),
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solvers_on_a_multi_leaf_tree(name: str) -> None:
    """The operator couples all leaves: every solver must use the whole matrix."""
    make, ridge = SOLVERS[name]
    matrix = _spd(8)
    matvec, to_vec, to_tree = _tree_operator(matrix)
    b = to_tree(torch.linspace(-1, 1, 8, dtype=F64))
    x = make()(matvec, b)
    assert set(x) == {"a", "b", "c"} and x["a"].shape == (2, 2) and x["c"].shape == ()
    expected = torch.linalg.solve(matrix + ridge * torch.eye(8, dtype=F64), to_vec(b))
    torch.testing.assert_close(to_vec(x), expected, rtol=1e-9, atol=1e-11)


def test_ridge_is_applied() -> None:
    matrix = _spd(8)
    matvec, to_vec, to_tree = _tree_operator(matrix)
    b = to_tree(torch.linspace(-1, 1, 8, dtype=F64))
    expected = torch.linalg.solve(matrix + 0.25 * torch.eye(8, dtype=F64), to_vec(b))
    for solver in (diff.solve_cg(rtol=1e-13, ridge=0.25), diff.solve_inv(ridge=0.25)):
        torch.testing.assert_close(to_vec(solver(matvec, b)), expected, rtol=1e-10, atol=1e-12)
    # normal CG with ridge solves (A^T A + ridge I) x = A^T b
    normal = diff.solve_normal_cg(rtol=1e-13, ridge=0.25)(matvec, b)
    expected_normal = torch.linalg.solve(
        matrix.T @ matrix + 0.25 * torch.eye(8, dtype=F64), matrix.T @ to_vec(b)
    )
    torch.testing.assert_close(to_vec(normal), expected_normal, rtol=1e-10, atol=1e-12)


def test_normal_cg_solves_a_non_symmetric_system() -> None:
    gen = torch.Generator().manual_seed(1)
    matrix = torch.eye(6, dtype=F64) * 3 + torch.randn(6, 6, generator=gen, dtype=F64)
    b = torch.randn(6, generator=gen, dtype=F64)
    x = diff.solve_normal_cg(rtol=1e-13)(lambda v: matrix @ v, b)
    torch.testing.assert_close(x, torch.linalg.solve(matrix, b), rtol=1e-9, atol=1e-11)


def test_cg_on_a_zero_dimensional_right_hand_side() -> None:
    """A 0-d b has one unknown: CG must iterate (not return x0 with maxiter = 0)."""
    x = linalg.cg(lambda v: 4.0 * v, torch.tensor(2.0, dtype=F64))
    torch.testing.assert_close(x, torch.tensor(0.5, dtype=F64))


def test_cg_options() -> None:
    matrix = _spd(10, seed=3)
    b = torch.ones(10, dtype=F64)
    exact = torch.linalg.solve(matrix, b)
    # a Jacobi preconditioner and a warm start reach the same solution
    inv_diag = 1 / torch.diagonal(matrix)
    x = linalg.cg(matrix, b, x0=exact + 0.1, rtol=1e-13, M=lambda v: inv_diag * v)
    torch.testing.assert_close(x, exact, rtol=1e-10, atol=1e-12)
    # maxiter=1 stops early; atol large enough stops before any iteration
    one = linalg.cg(matrix, b, maxiter=1)
    assert float((one - exact).norm()) > 1e-3
    assert (linalg.cg(matrix, b, atol=1e3) == 0).all()
    # a zero right-hand side gives zero
    assert (linalg.cg(matrix, torch.zeros(10, dtype=F64)) == 0).all()


def test_neumann_series() -> None:
    matrix = _spd(5, seed=4)
    alpha = 1 / float(torch.linalg.eigvalsh(matrix)[-1])
    b = torch.arange(5, dtype=F64)
    torch.testing.assert_close(
        linalg.ns(matrix, b, maxiter=2000, alpha=alpha),
        torch.linalg.solve(matrix, b),
        rtol=1e-9,
        atol=1e-12,
    )
    torch.testing.assert_close(
        linalg.ns_inv(matrix, maxiter=2000, alpha=alpha),
        torch.linalg.inv(matrix),
        rtol=1e-9,
        atol=1e-12,
    )
    # maxiter=0 is the first term alpha * b
    torch.testing.assert_close(linalg.ns(matrix, b, maxiter=0, alpha=alpha), alpha * b)


def test_bad_input() -> None:
    b = torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match="square matrix"):
        linalg.cg(torch.ones(3, 2, dtype=F64), b)
    with pytest.raises(TypeError, match="A: expected a tensor or a callable"):
        linalg.cg("A", b)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"b: every leaf must be a torch\.Tensor"):
        linalg.cg(lambda v: v, [b, 1.0])
    with pytest.raises(ValueError, match="rtol"):
        diff.solve_cg(rtol=-1.0)
    with pytest.raises(ValueError, match="maxiter"):
        diff.solve_cg(maxiter=-1)
    with pytest.raises(ValueError, match="ridge"):
        diff.solve_inv(ridge=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        diff.solve_inv(ns=True, alpha=0.0)
    with pytest.raises(ValueError, match="structure"):
        diff.solve_cg()(lambda v: (v, v), b)
    with pytest.raises(ValueError, match="shape"):
        diff.solve_inv()(lambda v: v.sum(), b)
    with pytest.raises(TypeError, match="one dtype"):
        diff.solve_inv()(lambda v: v, (b, torch.ones(2, dtype=torch.float32)))
