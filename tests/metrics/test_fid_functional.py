"""FID/KID on features, checked against closed forms, torchmetrics and torch-fidelity."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from metrics.functional.fid import (
    FeatureStats, features_to_stats, fid_from_stats, frechet_distance, kid, merge_stats, mmd2_unbiased, rank_warning,
    stats_to_mean_cov,
)


def _closed_form(mu1, d1, mu2, d2) -> float:
    # Gaussians with commuting covariances Q diag(d) Qᵀ: tr√(Σ1Σ2) = Σ√(d1 d2), so
    # FID = ‖μ1−μ2‖² + Σ(√d1 − √d2)².
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2))


def test_frechet_distance_matches_closed_form_diagonal_and_commuting() -> None:
    rng = np.random.default_rng(0)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    d1, d2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = _closed_form(mu1, d1, mu2, d2)
    got_diag = frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2))
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # random rotation: covariances commute, not diagonal
    got_rot = frechet_distance(mu1, q @ np.diag(d1) @ q.T, mu2, q @ np.diag(d2) @ q.T)
    assert got_diag == pytest.approx(expected, rel=1e-6)
    assert got_rot == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu1, np.diag(d1), mu1, np.diag(d1)) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_samples_approaches_closed_form() -> None:
    # Sample statistics converge to the population FID (loose: a sampling check, not an identity).
    rng = np.random.default_rng(1)
    d, n = 4, 200_000
    mu1, mu2, d1, d2 = np.zeros(d), np.full(d, 0.5), np.array([1, 2, 0.5, 1.5]), np.array([2, 1, 1, 0.5])
    x = mu1 + rng.normal(size=(n, d)) * np.sqrt(d1)
    y = mu2 + rng.normal(size=(n, d)) * np.sqrt(d2)
    fid = fid_from_stats(features_to_stats(x), features_to_stats(y)).value
    assert fid == pytest.approx(_closed_form(mu1, d1, mu2, d2), rel=2e-2)


class IndexedFeatures(nn.Module):
    """An 'extractor' for torchmetrics that returns given features: image i carries i in two pixels."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("table", torch.from_numpy(table))  # float64, so torchmetrics returns float64
        self.num_features = table.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()
        return self.table[idx]


def _index_images(indices: np.ndarray) -> torch.Tensor:
    img = torch.zeros(len(indices), 3, 4, 4, dtype=torch.uint8)
    img[:, 0, 0, 0] = torch.from_numpy(indices // 256).to(torch.uint8)
    img[:, 0, 0, 1] = torch.from_numpy(indices % 256).to(torch.uint8)
    return img


def test_fid_equals_torchmetrics_and_torch_fidelity_on_same_features() -> None:
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.default_rng(2)
    n1, n2, d = 300, 260, 8
    a = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d)) + 0.3
    b = rng.normal(size=(n2, d)) * rng.uniform(0.5, 2, d)
    table = np.concatenate([a, b])
    tm = FrechetInceptionDistance(feature=IndexedFeatures(table))
    tm.update(_index_images(np.arange(n1)), real=True)
    tm.update(_index_images(np.arange(n1, n1 + n2)), real=False)
    expected_tm = float(tm.compute())
    expected_tf = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(a)),
                                           fid_features_to_statistics(torch.from_numpy(b)), verbose=False)
    res = fid_from_stats(features_to_stats(a), features_to_stats(b))
    assert res.value == pytest.approx(expected_tm, rel=1e-9)
    assert res.value == pytest.approx(expected_tf["frechet_inception_distance"], rel=1e-9)
    assert (res.n1, res.n2, res.dim, res.warning) == (n1, n2, d, "")


def test_stats_independent_of_batching_and_sharding() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(130, 6)), rng.normal(size=(90, 6)) * 1.5
    whole = fid_from_stats(features_to_stats(a), features_to_stats(b)).value
    for bs in (1, 7, 64):
        parts = merge_stats(*[features_to_stats(a[i:i + bs]) for i in range(0, len(a), bs)])
        assert fid_from_stats(parts, features_to_stats(b)).value == pytest.approx(whole, rel=1e-10, abs=0)
    shards = merge_stats(features_to_stats(a[:40]), features_to_stats(a[40:41]), features_to_stats(a[41:]))
    assert fid_from_stats(shards, features_to_stats(b)).value == pytest.approx(whole, rel=1e-10, abs=0)
    mu, cov = stats_to_mean_cov(shards)
    np.testing.assert_allclose(cov, np.cov(a, rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mu, a.mean(0), rtol=1e-12)


def test_stats_roundtrip_bytes_and_dim_checks() -> None:
    s = features_to_stats(np.arange(12.0).reshape(4, 3))
    t = FeatureStats.from_bytes(s.to_bytes())
    assert t.n == 4 and np.array_equal(t.sum, s.sum) and np.array_equal(t.outer_sum, s.outer_sum)
    with pytest.raises(ValueError):
        merge_stats(s, features_to_stats(np.zeros((2, 5))))


def test_rank_warning_when_n_not_above_dim() -> None:
    rng = np.random.default_rng(4)
    small, big = features_to_stats(rng.normal(size=(10, 10))), features_to_stats(rng.normal(size=(11, 10)))
    assert "n=10 <= dim=10" in rank_warning(small)
    assert rank_warning(big) == ""
    assert "rank-deficient" in fid_from_stats(small, big).warning


def test_kid_equals_torchmetrics_with_full_subset() -> None:
    # With one subset of all samples, the subset draw is a permutation and unbiased MMD² is invariant to it.
    from torchmetrics.image.kid import KernelInceptionDistance

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(40, 8)), rng.normal(size=(40, 8)) + 0.4
    tm = KernelInceptionDistance(feature=IndexedFeatures(np.concatenate([a, b])), subsets=1, subset_size=40)
    tm.update(_index_images(np.arange(40)), real=True)
    tm.update(_index_images(np.arange(40, 80)), real=False)
    expected = float(tm.compute()[0])
    mean, std = kid(b, a, subsets=1, subset_size=40)
    assert mean == pytest.approx(expected, rel=1e-9)
    assert np.isnan(std)  # one subset holding both whole sets: no spread (torchmetrics reports 0)
    m2, s2 = kid(b, a, subsets=20, subset_size=20, seed=1)
    assert np.isfinite(m2) and s2 > 0 and kid(b, a, subsets=20, subset_size=20, seed=1) == (m2, s2)
    with pytest.raises(ValueError):
        kid(a, b, subset_size=41)


def test_kid_against_paired_originals_matches_the_closed_form() -> None:
    # Issue 17.2: n = 400, d = 64, edits = originals + noise. Keeping each edit's pairing with its own original
    # in the cross term gave about -0.036 here for every noise level (a no-op and a real change alike).
    # Closed form: for x ~ N(0, s²I), y ~ N(0, I) and k = (xᵀy/d + 1)³, E k(x,x') = 1 + 3s⁴/d,
    # E k(y,y') = 1 + 3/d, E k(x,y') = 1 + 3s²/d (odd moments vanish), so MMD² = 3(s² − 1)²/d, s² = 1 + noise².
    rng = np.random.default_rng(17)
    originals = rng.normal(size=(400, 64))
    for noise, tol in ((0.001, 1e-6), (0.5, 6e-4), (1.0, 5e-3)):
        edits = originals + noise * rng.normal(size=originals.shape)
        expected = 3 * noise**4 / 64
        assert mmd2_unbiased(edits, originals, paired=True) == pytest.approx(expected, abs=tol)
        mean, std = kid(edits, originals, subsets=50, subset_size=100, paired=True)
        assert mean == pytest.approx(expected, abs=max(tol, 3 * std / 50**0.5)) and std > 0
    assert abs(mmd2_unbiased(originals, originals.copy(), paired=True)) < 1e-12


def test_kid_on_whole_sets_is_one_estimate_without_a_spread() -> None:
    # A group smaller than the subset size used to give 100 identical subsets and std 0.
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(30, 8)), rng.normal(size=(30, 8))
    mean, std = kid(a, b, subsets=100, subset_size=30)
    assert mean == pytest.approx(mmd2_unbiased(a, b)) and np.isnan(std)
