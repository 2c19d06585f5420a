"""Subspace iteration for the top-k singular triplets of a Jacobian known only through products.

Haas et al. (FG 2024), Sec. IV-B Alg. 1 ("Jacobian subspace iteration", batched) and SM E Alg. 2
(sequential, blocks of b vectors with projection onto the complement of the vectors already found);
Park et al. (NeurIPS 2023) run the same batched iteration on ∂h/∂x_t. Here, with A = JᵀJ (input space:
h-space for Haas et al.), each iteration is

    U ← J V            (batched JVP, `jvp`)
    V̂ ← Jᵀ U = A V     (batched VJP, `vjp`)
    (V, Σ², ·) ← reduced SVD(V̂)

so V converges to the top right singular vectors and Σ to the singular values (Saad, Ch. 5). This is not
what Haas et al.'s official code does: it iterates J Jᵀ in the output space (ε-space), U ← J Jᵀ U from a
Gaussian U, and returns V = Jᵀ U / σ at the end (see methods/jacobian.py). Both iterate the same
nonzero spectrum, so they converge to the same top singular triplets up to sign (the audit of issue 17
measured singular values equal to 1e-6 and subspace angles < 0.2° against the official code); the
iterates, the start and hence the sign before `fix_signs` differ.

Conventions:
- `jvp(vs)` maps a batch of tangents (b, *in_shape) to (b, *out_shape); `vjp(us)` maps (b, *out_shape)
  to (b, *in_shape). Both are called with tensors of the working dtype; their outputs are cast to it.
- Results are rows: V (k, *in_shape), U (k, *out_shape), S (k,), sorted by decreasing σ.
- Signs: singular vectors are defined up to sign; each v_i is flipped so that its entry of largest
  magnitude is positive, a deterministic convention (the official test's `fix_sign_ambiguity` makes the
  first entry positive instead, which is fragile when that entry is near 0). Edits use ±strength anyway.
- Alg. 2 deflation: the paper projects the block before the JVP, Φ ← [I − V(VᵀV)⁻¹Vᵀ]Φ; the official
  code projects the product v̂ = JᵀJv instead. Both are applied here, i.e. the iteration runs on the
  symmetric deflated operator P A P, whose top eigenvectors are the next singular vectors.
- Stop criterion ([ASSUMPTION], methods-spec §9 item 19): `kind="sigma"` stops once the relative change
  of every σ_i stays below `tol` for `patience` consecutive iterations (the official code counts >10
  iterations with an absolute change of σ² below tol, not necessarily consecutive); `kind="vectors"` is
  Park et al.'s rule: stop once max |V − V_prev| <= tol after more than `min_iters` iterations.
  Either way at most `max_iters` iterations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

from harness.errors import ConfigError

Matvec = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StopCriterion:
    kind: Literal["sigma", "vectors"] = "sigma"
    tol: float = 1e-5
    """sigma: bound on max_i |σ_i − σ_i'| / σ_i; vectors: bound on max |V − V_prev| (signs aligned)."""
    patience: int = 10
    """Consecutive iterations below tol needed to stop (kind="sigma"; "vectors" stops at the first)."""
    max_iters: int = 50
    min_iters: int = 0
    """Iterations that always run before the criterion is checked (Park et al.: 10)."""

    def validate(self, prefix: str) -> None:
        if self.max_iters < 1:
            raise ConfigError(f"{prefix}.max_iters", self.max_iters, "an integer >= 1")
        if self.tol < 0:
            raise ConfigError(f"{prefix}.tol", self.tol, "a number >= 0")
        if self.patience < 1:
            raise ConfigError(f"{prefix}.patience", self.patience, "an integer >= 1")
        if self.min_iters < 0:
            raise ConfigError(f"{prefix}.min_iters", self.min_iters, "an integer >= 0")


@dataclass
class SubspaceResult:
    V: torch.Tensor
    """Right singular vectors, (k, *in_shape), unit norm, orthogonal."""
    S: torch.Tensor
    """Singular values, (k,), decreasing."""
    U: torch.Tensor | None
    """Left singular vectors J v_i / ‖J v_i‖, (k, *out_shape); None unless requested."""
    iterations: int
    """Iterations run (summed over blocks for the sequential variant)."""
    converged: bool
    """True when the stop criterion was met before max_iters (for every block)."""


def working_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """QR/SVD precision for a model of `model_dtype`: float64 for float64 models, else float32 (never half)."""
    return torch.float64 if model_dtype == torch.float64 else torch.float32


def fix_signs(V: torch.Tensor) -> torch.Tensor:
    """Flip each column of V (d, k) so that its entry of largest magnitude is positive."""
    idx = V.abs().argmax(dim=0)
    signs = torch.sign(V.gather(0, idx.unsqueeze(0))).squeeze(0)
    signs[signs == 0] = 1
    return V * signs


def _orthonormal(M: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(M, mode="reduced").Q


def _project_out(M: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """[I − V(VᵀV)⁻¹Vᵀ] M (Haas et al. Alg. 2, eq. 12 form)."""
    return M - V @ torch.linalg.solve(V.T @ V, V.T @ M)


class _Criterion:
    def __init__(self, stop: StopCriterion) -> None:
        self.stop = stop
        self.count = 0
        self.prev_s: torch.Tensor | None = None
        self.prev_v: torch.Tensor | None = None

    def done(self, iteration: int, s: torch.Tensor, V: torch.Tensor) -> bool:
        """Call after iteration `iteration` (1-based) with its σ (k,) and V (d, k)."""
        stop = self.stop
        if stop.kind == "sigma":
            ok = self.prev_s is not None and bool(
                ((s - self.prev_s).abs() / s.abs().clamp_min(torch.finfo(s.dtype).tiny)).max() < stop.tol)
            self.count = self.count + 1 if ok else 0
            met = self.count >= stop.patience
        else:
            met = False
            if self.prev_v is not None:
                signs = torch.where((self.prev_v * V).sum(0) < 0, -1.0, 1.0).to(V.dtype)
                met = bool((V - self.prev_v * signs).abs().max() <= stop.tol)
        self.prev_s, self.prev_v = s, V
        return met and iteration > stop.min_iters


def _iterate(jvp: Matvec, vjp: Matvec, in_shape: Sequence[int], Phi: torch.Tensor, stop: StopCriterion,
             found: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Subspace iteration of one block Phi (d, b), deflated against `found` (d, m) if given."""
    dtype = Phi.dtype
    b = Phi.shape[1]
    Phi = _orthonormal(Phi)
    criterion = _Criterion(stop)
    s = torch.zeros(b, dtype=dtype, device=Phi.device)
    for it in range(1, stop.max_iters + 1):
        if found is not None:
            Phi = _orthonormal(_project_out(Phi, found))
        Psi = jvp(Phi.T.reshape(b, *in_shape)).to(dtype)                 # U = J V
        Phi_hat = vjp(Psi).to(dtype).reshape(b, -1).T                     # V̂ = Jᵀ U
        if found is not None:
            Phi_hat = _project_out(Phi_hat, found)
        W, s2, _ = torch.linalg.svd(Phi_hat, full_matrices=False)          # V̂ = V Σ² R
        Phi, s = fix_signs(W), s2.clamp_min(0).sqrt()
        if criterion.done(it, s, Phi):
            return Phi, s, it, True
    return Phi, s, stop.max_iters, False


def _initial(d: int, k: int, init: torch.Tensor | None, generator: torch.Generator | None,
             dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    if init is not None:
        M = init.reshape(init.shape[0], -1).T.to(device=device, dtype=dtype)
        if M.shape != (d, k):
            raise ValueError(f"initial guess has {M.shape[1]} vectors of size {M.shape[0]}; expected {k} of size {d}")
        return M
    # Drawn on the CPU so the same generator gives the same start on every device.
    return torch.randn((d, k), generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


def _left_vectors(jvp: Matvec, V: torch.Tensor, in_shape: Sequence[int]) -> torch.Tensor:
    U = jvp(V.T.reshape(V.shape[1], *in_shape)).to(V.dtype)
    norms = U.reshape(U.shape[0], -1).norm(dim=1).clamp_min(torch.finfo(V.dtype).tiny)
    return U / norms.view(-1, *([1] * (U.dim() - 1)))


def subspace_iteration(jvp: Matvec, vjp: Matvec, in_shape: Sequence[int], k: int, *,
                       variant: Literal["batched", "sequential"] = "batched", block_size: int = 1,
                       init: torch.Tensor | None = None, stop: StopCriterion = StopCriterion(),
                       generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                       device: torch.device | str = "cpu", compute_u: bool = False) -> SubspaceResult:
    """Top-k singular triplets of J (J: R^d_in -> R^d_out) from products with J and Jᵀ.

    variant "batched": Alg. 1, all k vectors at once. "sequential": Alg. 2, blocks of `block_size`,
    each deflated against the vectors found before it. `init` (k, *in_shape): initial guess Θ
    (default: i.i.d. Gaussian from `generator`). `compute_u`: one more batched JVP for U = J V / σ
    (Alg. 1's final "orthonormalize U"; not needed to apply right singular vectors).
    """
    in_shape = tuple(in_shape)
    d = 1
    for n in in_shape:
        d *= n
    if not 1 <= k <= d:
        raise ValueError(f"k must be in [1, {d}], got {k}")
    M0 = _initial(d, k, init, generator, dtype, device)
    if variant == "batched":
        V, S, iterations, converged = _iterate(jvp, vjp, in_shape, M0, stop, None)
    elif variant == "sequential":
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        blocks_v: list[torch.Tensor] = []
        blocks_s: list[torch.Tensor] = []
        iterations, converged = 0, True
        for start in range(0, k, block_size):
            found = torch.cat(blocks_v, dim=1) if blocks_v else None
            Vb, Sb, it, ok = _iterate(jvp, vjp, in_shape, M0[:, start:start + block_size], stop, found)
            blocks_v.append(Vb)
            blocks_s.append(Sb)
            iterations += it
            converged = converged and ok
        V, S = torch.cat(blocks_v, dim=1), torch.cat(blocks_s)
    else:
        raise ValueError(f"unknown variant {variant!r}; expected 'batched' or 'sequential'")
    U = _left_vectors(jvp, V, in_shape) if compute_u else None
    return SubspaceResult(V=V.T.reshape(k, *in_shape), S=S, U=U, iterations=iterations, converged=converged)
