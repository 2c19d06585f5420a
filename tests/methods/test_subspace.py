"""Subspace iteration (Haas et al. Alg. 1 and Alg. 2) against full SVDs of explicit matrices."""
from __future__ import annotations

import pytest
import torch

from harness.diffusion.autodiff import batched_jvp, batched_vjp
from harness.errors import ConfigError
from harness.schema import from_dict
from methods._subspace import StopCriterion, fix_signs, subspace_iteration

VARIANTS = [("batched", 1), ("sequential", 1), ("sequential", 2)]


# Small linear algebra runs fastest on one thread (and the machine's cores are shared).
pytestmark = pytest.mark.usefixtures("one_thread")


def matrix_products(A: torch.Tensor, in_shape: tuple[int, ...] | None = None):
    """jvp/vjp of the linear map x ↦ A x on batches of (possibly shaped) vectors."""
    in_shape = in_shape or (A.shape[1],)
    calls = {"jvp": 0, "vjp": 0}

    def jvp(vs: torch.Tensor) -> torch.Tensor:
        calls["jvp"] += 1
        return vs.reshape(vs.shape[0], -1) @ A.T

    def vjp(us: torch.Tensor) -> torch.Tensor:
        calls["vjp"] += 1
        return (us @ A).reshape(us.shape[0], *in_shape)

    return jvp, vjp, calls


def with_spectrum(m: int, n: int, svals: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q1 = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64)).Q
    Q2 = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    s = torch.zeros(min(m, n), dtype=torch.float64)
    s[: len(svals)] = torch.tensor(svals, dtype=torch.float64)
    return Q1[:, : len(s)] @ torch.diag(s) @ Q2[:, : len(s)].T


def assert_matches_svd(res, A: torch.Tensor, k: int, tol: float) -> None:
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    V = res.V.reshape(k, -1)
    assert torch.allclose(res.S, S[:k], rtol=tol, atol=0), (res.S, S[:k])
    signs = torch.sign((V * Vh[:k]).sum(1))
    assert (V - signs[:, None] * Vh[:k]).abs().max() < tol
    assert torch.allclose(V @ V.T, torch.eye(k, dtype=V.dtype), atol=tol)
    if res.U is not None:
        assert (res.U.reshape(k, -1) - signs[:, None] * U[:, :k].T).abs().max() < tol


@pytest.mark.parametrize("variant,block", VARIANTS)
def test_recovers_top_k_of_a_matrix_with_known_spectrum(variant: str, block: int) -> None:
    A = with_spectrum(50, 40, [10.0, 6.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    jvp, vjp, _ = matrix_products(A, (5, 8))
    res = subspace_iteration(jvp, vjp, (5, 8), 3, variant=variant, block_size=block, dtype=torch.float64,
                             stop=StopCriterion(tol=0.0, max_iters=60),
                             generator=torch.Generator().manual_seed(1), compute_u=True)
    assert res.V.shape == (3, 5, 8) and res.U.shape == (3, 50)
    assert res.iterations == 60 * (1 if variant == "batched" else -(-3 // block))
    assert_matches_svd(res, A, 3, 1e-10)


@pytest.mark.parametrize("variant,block", VARIANTS)
def test_recovers_top_k_of_a_gaussian_matrix(variant: str, block: int) -> None:
    # Seed chosen for singular-value gaps >= 7% among the top 5 (iterations needed grow as 1/gap).
    A = torch.randn(40, 12, generator=torch.Generator().manual_seed(169), dtype=torch.float64)
    jvp, vjp, _ = matrix_products(A)
    res = subspace_iteration(jvp, vjp, (12,), 4, variant=variant, block_size=block, dtype=torch.float64,
                             stop=StopCriterion(tol=0.0, max_iters=250), compute_u=True,
                             generator=torch.Generator().manual_seed(2))
    assert_matches_svd(res, A, 4, 1e-6)


def test_nonlinear_function_through_autodiff_helpers() -> None:
    """f(x) = sin(A x) differentiated with the harness's batched JVP/VJP, as the official test does."""
    A = with_spectrum(20, 80, [8.0, 5.0, 3.0, 1.0, 0.5])
    x0 = 0.1 * torch.randn(1, 80, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x @ A.T)

    J = torch.autograd.functional.jacobian(lambda x: f(x.view(1, -1)).view(-1), x0.view(-1))
    res = subspace_iteration(lambda v: batched_jvp(f, x0, v), lambda u: batched_vjp(f, x0, u), (80,), 3,
                             dtype=torch.float64, stop=StopCriterion(tol=0.0, max_iters=60), compute_u=True)
    assert_matches_svd(res, J, 3, 1e-8)


def test_sigma_criterion_counts_consecutive_iterations_and_max_iters() -> None:
    A = with_spectrum(30, 20, [5.0, 1.0, 0.1])
    jvp, vjp, calls = matrix_products(A)
    res = subspace_iteration(jvp, vjp, (20,), 1, dtype=torch.float64, stop=StopCriterion(tol=1e-5, patience=10))
    # Converges in a handful of iterations, then needs 10 more below tol; never more than max_iters.
    assert res.converged and 11 <= res.iterations < 50
    assert calls["jvp"] == calls["vjp"] == res.iterations  # no U requested: no extra product
    res = subspace_iteration(jvp, vjp, (20,), 2, dtype=torch.float64, stop=StopCriterion(tol=0.0, max_iters=3))
    assert not res.converged and res.iterations == 3


def test_vectors_criterion_respects_min_iters() -> None:
    A = with_spectrum(30, 20, [5.0, 1.0, 0.1])
    jvp, vjp, _ = matrix_products(A)
    res = subspace_iteration(jvp, vjp, (20,), 2, dtype=torch.float64,
                             stop=StopCriterion(kind="vectors", tol=1e-4, min_iters=10, max_iters=50))
    assert res.converged and res.iterations == 11
    res = subspace_iteration(jvp, vjp, (20,), 2, dtype=torch.float64,
                             stop=StopCriterion(kind="vectors", tol=1e-4, min_iters=0, max_iters=50))
    assert res.converged and res.iterations < 11


@pytest.mark.parametrize("variant", ["batched", "sequential"])
def test_initial_guess_at_the_solution_stays_there(variant: str) -> None:
    A = with_spectrum(30, 20, [3.0, 2.0, 1.5, 1.0])
    _, _, Vh = torch.linalg.svd(A)
    jvp, vjp, _ = matrix_products(A)
    res = subspace_iteration(jvp, vjp, (20,), 3, variant=variant, init=Vh[:3], dtype=torch.float64,
                             stop=StopCriterion(tol=1e-12, patience=2, max_iters=50))
    assert res.converged and res.iterations <= 3 * 3
    assert_matches_svd(res, A, 3, 1e-10)


def test_sequential_blocks_are_orthogonal_and_deterministic() -> None:
    A = torch.randn(40, 25, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    jvp, vjp, _ = matrix_products(A)
    kw = dict(variant="sequential", block_size=2, dtype=torch.float64, stop=StopCriterion(max_iters=5))
    a = subspace_iteration(jvp, vjp, (25,), 5, generator=torch.Generator().manual_seed(9), **kw)
    b = subspace_iteration(jvp, vjp, (25,), 5, generator=torch.Generator().manual_seed(9), **kw)
    c = subspace_iteration(jvp, vjp, (25,), 5, generator=torch.Generator().manual_seed(10), **kw)
    assert torch.equal(a.V, b.V) and torch.equal(a.S, b.S)
    assert not torch.equal(a.V, c.V)
    # Even unconverged (5 iterations), later blocks are projected off the earlier ones.
    assert torch.allclose(a.V @ a.V.T, torch.eye(5, dtype=torch.float64), atol=1e-10)


def test_sign_convention_and_errors() -> None:
    V = torch.tensor([[0.1, -0.9], [-0.8, 0.2], [0.3, 0.1]])
    fixed = fix_signs(V)
    assert torch.equal(fixed, torch.tensor([[-0.1, 0.9], [0.8, -0.2], [-0.3, -0.1]]))
    jvp, vjp, _ = matrix_products(torch.eye(4))
    with pytest.raises(ValueError, match="k must be"):
        subspace_iteration(jvp, vjp, (4,), 5)
    with pytest.raises(ValueError, match="variant"):
        subspace_iteration(jvp, vjp, (4,), 2, variant="nope")
    with pytest.raises(ValueError, match="initial guess"):
        subspace_iteration(jvp, vjp, (4,), 2, init=torch.eye(4)[:3])
    with pytest.raises(ConfigError, match="max_iters"):
        from_dict(StopCriterion, {"max_iters": 0})
    with pytest.raises(ConfigError, match="kind"):
        from_dict(StopCriterion, {"kind": "eigen"})
