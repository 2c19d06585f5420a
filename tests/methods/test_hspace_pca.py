"""h-space PCA (Haas et al. Sec. IV-A): streaming PCA against a full SVD, sign alignment, edits, harness run."""
from __future__ import annotations

import json

import pytest
import torch

from harness.config import SamplerConfig
from harness.diffusion import h_shape
from harness.suites import load_suite
from methods.base import EditRequest, PrepareContext
from methods.hspace_pca import HSpacePCA, HSpacePCAOptions, step_scales
from methods._hspace import TimestepIPCA, align_signs, record_batches, sample_seeds
from tests.methods.conftest import assert_strength_zero_unedited, run_through_harness, to_uint8


def full_pca(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: torch.linalg.svd of the centred stacked matrix, per step. x: (T, N, d) -> (T,k,d), (T,k)."""
    centred = x - x.mean(dim=1, keepdim=True)
    _, s, vt = torch.linalg.svd(centred, full_matrices=False)
    return vt[:, :k], s[:, :k]


def assert_same_up_to_sign(u: torch.Tensor, ref: torch.Tensor, atol: float) -> None:
    signs = torch.sign((u * ref).sum(-1, keepdim=True))
    torch.testing.assert_close(u * signs, ref, atol=atol, rtol=0)


def stream(ipca: TimestepIPCA, x: torch.Tensor, sizes: list[int]) -> TimestepIPCA:
    assert sum(sizes) == x.shape[1]
    start = 0
    for b in sizes:
        ipca.partial_fit(x[:, start:start + b])
        start += b
    return ipca


# -- pure linear algebra ---------------------------------------------------------------------------

def test_incremental_pca_equals_full_svd_on_uneven_batches() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 23, 40, generator=g, dtype=torch.float64) * torch.linspace(3, 0.1, 40, dtype=torch.float64)
    x = x + 5.0  # a large mean, so the mean-correction row matters
    ipca = stream(TimestepIPCA(sketch_rank=23), x, [7, 1, 10, 5])
    ref_u, ref_s = full_pca(x, 10)
    torch.testing.assert_close(ipca.mean, x.mean(dim=1))
    torch.testing.assert_close(ipca.singular_values[:, :10], ref_s, rtol=1e-5, atol=0)
    assert_same_up_to_sign(ipca.components[:, :10], ref_u, atol=1e-6)
    assert ipca.n_seen == 23


def test_rank_r_sketch_is_exact_on_low_rank_data_and_only_then() -> None:
    g = torch.Generator().manual_seed(1)
    f64 = dict(generator=g, dtype=torch.float64)
    low = torch.randn(2, 30, 5, **f64) @ torch.randn(2, 5, 50, **f64)
    low = low + torch.randn(2, 1, 50, generator=g, dtype=torch.float64)
    sizes = [4, 9, 2, 11, 4]
    ipca = stream(TimestepIPCA(sketch_rank=6), low, sizes)  # the centred data has rank 5 <= 6 < N
    ref_u, ref_s = full_pca(low, 5)
    torch.testing.assert_close(ipca.singular_values[:, :5], ref_s, rtol=1e-5, atol=0)
    assert_same_up_to_sign(ipca.components[:, :5], ref_u, atol=1e-6)
    # Full-rank data with a small sketch is an approximation: the check above can fail.
    full = torch.randn(2, 30, 50, generator=g, dtype=torch.float64)
    approx = stream(TimestepIPCA(sketch_rank=3), full, sizes)
    assert not torch.allclose(approx.singular_values[:, :3], full_pca(full, 3)[1], rtol=1e-5)


def test_sign_alignment_makes_every_step_agree_with_the_first() -> None:
    g = torch.Generator().manual_seed(2)
    u = torch.randn(4, 6, 3, 2, 2, generator=g)
    aligned = align_signs(u)
    ip = (aligned[:, :1] * aligned).flatten(2).sum(-1)
    assert (ip >= 0).all()
    ratio = (aligned / u).flatten(2)
    assert ((ratio == 1) | (ratio == -1)).all()
    assert torch.equal(aligned[:, 0], u[:, 0])
    assert (ratio.amin(-1) == ratio.amax(-1)).all(), "a whole vector flips, never single entries"


def test_std_normalisation_divides_singular_values_by_sqrt_n_minus_1() -> None:
    group = {"singular_values": torch.tensor([[4.0, 6.0], [1.0, 2.0]], dtype=torch.float64), "n_samples": 17}
    torch.testing.assert_close(step_scales(group, 0, "std"), torch.tensor([1.0, 1.5], dtype=torch.float64))
    torch.testing.assert_close(step_scales(group, 1, "singular_values"), torch.tensor([1.0, 2.0], dtype=torch.float64))


# -- on the tiny pixel UNet -----------------------------------------------------------------------

SAMPLER = SamplerConfig(num_steps=3, eta=1.0)
# No sketch_rank: the default must be the exact PCA (issue 17.7; the old default, n_components, is not).
# component 0: these tests are about the PCA, not the calibrated choice of component (which needs a scorer).
OPTS = dict(n_samples=7, n_components=3, batch_size=3, fit_batch_size=4, component=0)


@pytest.fixture(scope="module")
def suite():
    return load_suite("hspace_paper")


@pytest.fixture(scope="module")
def state(tiny_unet, suite):
    ctx = PrepareContext(suite=suite, sampler=SAMPLER, seed=11)
    return HSpacePCA(HSpacePCAOptions(**OPTS)).prepare(tiny_unet, ctx)


def test_prepare_matches_full_svd_of_recorded_h(tiny_unet, state) -> None:
    group = state["groups"][""]
    k, T = 3, SAMPLER.num_steps
    assert group["components"].shape == (k, T, *h_shape(tiny_unet)) and group["n_samples"] == 7
    # Reference: record the same samples in one batch (other batching) and take a full SVD per step.
    seeds = sample_seeds(11, 7, "hspace-pca")
    (_, hs, _), = list(record_batches(tiny_unet, seeds, SAMPLER, batch_size=7))
    ref_u, ref_s = full_pca(hs.flatten(2).transpose(0, 1).double(), k)
    torch.testing.assert_close(group["singular_values"].T, ref_s, rtol=1e-4, atol=0)
    u = group["components"].flatten(2).double()  # (k, T, d)
    assert_same_up_to_sign(u.transpose(0, 1), ref_u, atol=1e-4)
    assert ((u[:, :1] * u).sum(-1) >= 0).all(), "signs aligned across steps"


def test_strength_zero_is_byte_identical_and_edits_are_deterministic(tiny_unet, state, suite) -> None:
    item = suite.item("smile")
    requests = [EditRequest("a", item, 0.0, 5), EditRequest("b", item, 4.0, 5)]
    for opts in (HSpacePCAOptions(**OPTS), HSpacePCAOptions(**OPTS, random_control=True)):
        st = state if not opts.random_control else {**state,
                                                    "random": torch.randn(SAMPLER.num_steps, *h_shape(tiny_unet))}
        out = HSpacePCA(opts).edit(tiny_unet, st, requests, SAMPLER)
        assert torch.equal(to_uint8(out[0].edited), to_uint8(out[0].original))
        assert not torch.equal(to_uint8(out[1].edited), to_uint8(out[1].original))
        assert torch.equal(out[0].original, out[1].original)
    again = HSpacePCA(opts).edit(tiny_unet, st, requests, SAMPLER)
    assert all(torch.equal(a.edited, b.edited) and torch.equal(a.original, b.original) for a, b in zip(out, again))


def test_prepare_refuses_components_of_unknown_attributes(tiny_unet, suite) -> None:
    from harness.errors import ConfigError

    opts = HSpacePCAOptions(n_samples=2, n_components=1, components={"moustache": 0})
    with pytest.raises(ConfigError, match="options.components") as err:
        HSpacePCA(opts).prepare(tiny_unet, PrepareContext(suite=suite, sampler=SAMPLER, seed=0))
    assert err.value.value == "moustache" and "smile" in err.value.allowed


def test_deltas_scale_component_and_random_control(tiny_unet, state, suite) -> None:
    group = state["groups"][""]
    opts = HSpacePCAOptions(**OPTS, components={"age": 2})
    requests = [EditRequest("a", suite.item("smile"), 2.0, 0), EditRequest("b", suite.item("age"), -1.0, 0)]
    deltas, info = HSpacePCA(opts).deltas(state, requests, tiny_unet)
    assert [i["component"] for i in info] == [0, 2]
    sigma0 = group["singular_values"][0] / 6 ** 0.5
    expect = 2.0 * sigma0.float().view(-1, 1, 1, 1) * group["components"][0]
    torch.testing.assert_close(deltas[0], expect)
    raw, _ = HSpacePCA(HSpacePCAOptions(**OPTS, normalisation="singular_values")).deltas(state, requests[:1], tiny_unet)
    torch.testing.assert_close(raw[0], deltas[0] * 6 ** 0.5)
    # Random control: per-step norms equal the PC edit's, directions unrelated to the PC.
    ctx = PrepareContext(suite=suite, sampler=SAMPLER, seed=11)
    control = HSpacePCA(HSpacePCAOptions(n_samples=2, n_components=1, component=0, random_control=True))
    rnd_state = {**state, "random": control.prepare(tiny_unet, ctx)["random"]}
    rnd, _ = HSpacePCA(HSpacePCAOptions(**OPTS, random_control=True)).deltas(rnd_state, requests[:1], tiny_unet)
    torch.testing.assert_close(rnd[0].flatten(1).norm(dim=1), deltas[0].flatten(1).norm(dim=1), rtol=1e-5, atol=0)
    cos = torch.nn.functional.cosine_similarity(rnd[0].flatten(1), deltas[0].flatten(1), dim=1)
    assert cos.abs().max() < 0.5


# -- end to end through the harness --------------------------------------------------------------

def test_end_to_end_on_tiny_unet_and_tiny_sd(tmp_path) -> None:
    cfg, rows = run_through_harness(
        tmp_path, 8, run_id="hspace-pca", models=["tiny-unet", "tiny-sd"], items=["smile", "age"],
        strengths=[0.0, 2.0], sampler={"num_steps": 3, "eta": 0.0, "guidance_scale": 7.5},
        methods=[{"name": "hspace-pca", "options": {"n_samples": 4, "n_components": 2, "components": {"age": 1},
                                                     "batch_size": 4, "scorer": {"kind": "channel-mean"},
                                                     "calibration": {"n_samples": 2}}}])
    for item_id, info in zip(rows["item_id"], rows["info"].map(json.loads)):
        if item_id == "age":  # fixed by `components`
            assert (info["component"], info["sign"], info["calibrated"]) == (1, 1, False)
        else:  # smile: calibrated
            assert info["calibrated"] is True and info["component"] in (0, 1) and info["sign"] in (1, -1)
            assert info["calibration_samples"] == 2 and len(info["calibration_gains"]) == 2
    assert_strength_zero_unedited(cfg, rows)
