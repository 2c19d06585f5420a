"""Fréchet distance and KID on feature vectors, with exactly mergeable float64 statistics.

FID is kept as sufficient statistics (n, Σx, Σxxᵀ) in float64, as torchmetrics does, because sums
merge across batches and Ray shards by addition; the covariance is only formed at the end. The
square-root trace uses the eigenvalues of Σ1Σ2 (torch-fidelity ≥ 0.4 and torchmetrics), which avoids
scipy's sqrtm retries and is symmetric in its inputs.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(50, 4)), rng.normal(size=(60, 4)) + 1.0
    >>> whole = features_to_stats(a)
    >>> parts = merge_stats(features_to_stats(a[:20]), features_to_stats(a[20:]))
    >>> bool(abs(fid_from_stats(whole, features_to_stats(b)).value
    ...          - fid_from_stats(parts, features_to_stats(b)).value) < 1e-9)
    True
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FeatureStats:
    """Sufficient statistics of a feature set: count, Σx (d,) and Σxxᵀ (d, d), all float64."""

    n: int
    sum: np.ndarray
    outer_sum: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.sum.shape[0])

    def to_bytes(self) -> bytes:
        """Serialise to .npz bytes (for caches and for shipping partial stats between workers)."""
        buf = io.BytesIO()
        np.savez(buf, n=np.int64(self.n), sum=self.sum, outer_sum=self.outer_sum)
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> FeatureStats:
        z = np.load(io.BytesIO(data))
        return FeatureStats(int(z["n"]), z["sum"].astype(np.float64), z["outer_sum"].astype(np.float64))


@dataclass(frozen=True)
class FIDResult:
    """A Fréchet distance plus what is needed to judge it (sample sizes, rank warning)."""

    value: float
    n1: int
    n2: int
    dim: int
    warning: str  # empty when both covariances can be full rank


def _as_float64(features: Any) -> np.ndarray:
    # Accept torch tensors without importing torch here: both expose .detach()/.cpu() or __array__.
    if hasattr(features, "detach"):
        features = features.detach().cpu().double().numpy()
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"features must be 2-D (n, d), got shape {arr.shape}")
    return arr


def features_to_stats(features: Any) -> FeatureStats:
    """(n, d) features -> FeatureStats; features are cast to float64 before any product."""
    x = _as_float64(features)
    return FeatureStats(int(x.shape[0]), x.sum(axis=0), x.T @ x)


def merge_stats(*stats: FeatureStats) -> FeatureStats:
    """Add statistics of disjoint feature sets (exact up to float64 rounding of the sums)."""
    if not stats:
        raise ValueError("merge_stats needs at least one FeatureStats")
    dims = {s.dim for s in stats}
    if len(dims) != 1:
        raise ValueError(f"cannot merge stats of different feature dimensions {sorted(dims)}")
    return FeatureStats(
        sum(s.n for s in stats),
        np.sum([s.sum for s in stats], axis=0),
        np.sum([s.outer_sum for s in stats], axis=0),
    )


def stats_to_mean_cov(stats: FeatureStats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased (n-1) covariance, as np.cov / torchmetrics compute them."""
    if stats.n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got n={stats.n}")
    mu = stats.sum / stats.n
    cov = (stats.outer_sum - stats.n * np.outer(mu, mu)) / (stats.n - 1)
    return mu, cov


def rank_warning(stats: FeatureStats) -> str:
    """Non-empty when the sample covariance cannot be full rank (n <= d): FID is then biased."""
    if stats.n <= stats.dim:
        return f"covariance rank-deficient: n={stats.n} <= dim={stats.dim}; FID biased, compare only at equal n"
    return ""


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1−μ2‖² + tr Σ1 + tr Σ2 − 2·Σ√λ(Σ1Σ2), in float64.

    Σ1Σ2 is similar to a PSD matrix, so its eigenvalues are real and ≥ 0 in exact arithmetic;
    rounding can leave tiny negative or imaginary parts, hence the complex sqrt and real part.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} {mu2.shape}, sigma {sigma1.shape} {sigma2.shape}")
    diff = mu1 - mu2
    eig = np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)
    tr_covmean = np.sqrt(eig).real.sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_stats(stats1: FeatureStats, stats2: FeatureStats) -> FIDResult:
    """FID between two feature sets given their statistics; the warning flags rank deficiency."""
    mu1, s1 = stats_to_mean_cov(stats1)
    mu2, s2 = stats_to_mean_cov(stats2)
    warning = "; ".join(w for w in (rank_warning(stats1), rank_warning(stats2)) if w)
    return FIDResult(frechet_distance(mu1, s1, mu2, s2), stats1.n, stats2.n, stats1.dim, warning)


def _poly_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float | None, coef0: float) -> np.ndarray:
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                  coef0: float = 1.0, paired: bool = False) -> float:
    """Unbiased MMD² with the polynomial kernel (Bińkowski et al.; torch-fidelity, torchmetrics).

    Within-set sums drop the diagonal (k(x,x) terms). Unpaired (x and y drawn independently), the cross
    term keeps all m·n pairs, as the references do. Paired (x_i is an edit of y_i, so m = n), the cross
    term drops the i = i pairs too: E k(x_i, y_i) is not E k(x, y') when x_i depends on y_i, and keeping it
    biases MMD² down by 2(E k(x_i, y_i) − E k(x, y'))/n (negative KID for good edits whatever they change).
    What remains is Gretton et al.'s (2012, Lemma 6) U-statistic over the pairs z_i = (x_i, y_i),
    h(z_i, z_j) = k(x_i,x_j) + k(y_i,y_j) − k(x_i,y_j) − k(x_j,y_i), unbiased whatever the pairing.
    """
    m, n = x.shape[0], y.shape[0]
    if paired and m != n:
        raise ValueError(f"paired MMD needs as many edits as originals, got {m} and {n}")
    k_xx = _poly_kernel(x, x, degree, gamma, coef0)
    k_yy = _poly_kernel(y, y, degree, gamma, coef0)
    k_xy = _poly_kernel(x, y, degree, gamma, coef0)
    sxx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    syy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    sxy = (k_xy.sum() - np.trace(k_xy)) / (m * (m - 1)) if paired else k_xy.mean()
    return float(sxx + syy - 2.0 * sxy)


def kid(features1: Any, features2: Any, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, seed: int = 0, paired: bool = False) -> tuple[float, float]:
    """KID mean and std over `subsets` random subsets (without replacement) of `subset_size` each.

    Subsets are drawn from a seeded numpy Generator, so the value is reproducible; std uses ddof=0
    as torch-fidelity and torchmetrics do. paired=True (features1[i] is an edit of features2[i]): one
    index subset is drawn for both sets, so pairs stay pairs, and MMD² drops the paired terms (see
    `mmd2_unbiased`). When a subset is the whole of both sets every draw gives the same value (MMD² is
    invariant to a permutation), so it is computed once and std is NaN: there is no subset spread to report.
    """
    x, y = _as_float64(features1), _as_float64(features2)
    if subset_size < 2 or subset_size > min(len(x), len(y)):
        raise ValueError(f"subset_size={subset_size} must be in [2, min(n1, n2)={min(len(x), len(y))}]")
    if subset_size == len(x) == len(y):
        return mmd2_unbiased(x, y, degree, gamma, coef0, paired), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        ix = rng.choice(len(x), subset_size, replace=False)
        iy = ix if paired else rng.choice(len(y), subset_size, replace=False)
        vals.append(mmd2_unbiased(x[ix], y[iy], degree, gamma, coef0, paired))
    return float(np.mean(vals)), float(np.std(vals))
