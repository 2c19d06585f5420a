"""Calibrated directions (methods/_calibration.py): the choice on planted effects, seeds, and the three methods' wiring.

Planted tests: the effect of every candidate is built by the test (a synthetic render, or the method's own
manual edit of one component with the − sign used as the scorer's target), so the right answer is known
before the calibration runs and a wrong component or sign fails.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.config import SamplerConfig
from harness.errors import ConfigError
from harness.hashing import STABLE_SEED_BITS, stable_seed
from harness.schema import from_dict
from harness.suites import Attribute, Suite, SuiteItem, load_suite
from harness.units import WorkUnit
from methods._calibration import (
    CALIBRATION_SEED_BASE, CalibrationOptions, CalibrationTarget, aligned_sign, calibrate, calibration_seeds,
)
from methods._scorers import ScorerSpec, make_scorer, register_scorer, score_attribute
from methods.base import EditRequest, PrepareContext
from methods.hspace_pca import HSpacePCA, HSpacePCAOptions
from methods.jacobian import JacobianOptions, JacobianSubspace
from methods.park_pullback import ParkOptions, ParkPullback
from methods._subspace import StopCriterion

pytestmark = pytest.mark.usefixtures("one_thread")

CHANNELS = {"red": 0, "green": 1, "blue": 2}
RED = Attribute(positive="red", negative="not red")
GREEN = Attribute(positive="green", negative="not green")


@register_scorer("test-calibration-channel")
def channel_of_prompt(device="cpu"):
    """Mean of the colour channel the positive prompt names."""
    return lambda images, positive, negative=None: images[:, CHANNELS[positive]].double().mean(dim=(1, 2))


TARGETS: dict[str, torch.Tensor] = {}


@register_scorer("test-nearest-target")
def nearest_target(device="cpu"):
    """Minus the distance to the nearest image of TARGETS["images"]: the planted edit scores highest."""

    def score(images, positive, negative=None):
        targets = TARGETS["images"].to(images.device, torch.float64).flatten(1)
        return -torch.cdist(images.double().flatten(1), targets).min(dim=1).values

    return score


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand((n, 3, 4, 4), generator=g, dtype=torch.float64)


def _shift(channel: int, amounts: torch.Tensor) -> torch.Tensor:
    """(n, 3, 4, 4) zeros with `amounts` added to one channel."""
    out = torch.zeros((amounts.shape[0], 3, 4, 4), dtype=torch.float64)
    out[:, channel] = amounts[:, None, None]
    return out


# -- the choice ----------------------------------------------------------------------------------

def test_shared_directions_pick_the_planted_component_and_sign() -> None:
    """Only component 2 with sign − raises red; only component 1 with + raises green; others do less or harm."""
    originals = _images(5, 0)
    red_per_unit = torch.tensor([0.0, 0.02, -0.1, 0.03])   # red change per unit strength along +v_j
    green_per_unit = torch.tensor([-0.01, 0.08, 0.0, 0.0])

    def render(j: int, strengths: torch.Tensor) -> torch.Tensor:
        return originals + _shift(0, strengths * red_per_unit[j]) + _shift(1, strengths * green_per_unit[j])

    target = CalibrationTarget(originals, render, components=range(4))
    scorer = make_scorer(ScorerSpec(kind="test-calibration-channel"))
    records = calibrate(target, {"red": RED, "green": GREEN}, scorer, CalibrationOptions(n_samples=5, strengths=(1.0,)))
    assert (records["red"]["component"], records["red"]["sign"]) == (2, -1)
    assert (records["green"]["component"], records["green"]["sign"]) == (1, 1)
    assert records["red"]["reference"] is None and aligned_sign(records["red"]) == -1
    # The recorded gains are the planted effects: + and − of every component, and the chosen one's.
    cand = records["red"]["candidates"]
    np.testing.assert_allclose(cand["gain_positive"], red_per_unit.numpy(), atol=1e-12)
    np.testing.assert_allclose(cand["gain_negative"], (-red_per_unit).numpy(), atol=1e-12)
    assert records["red"]["gain"] == pytest.approx(0.1)
    assert records["red"]["baseline"] == pytest.approx(float(originals[:, 0].mean()))
    # A fixed sign scores the components at that sign only.
    fixed = calibrate(target, {"red": RED}, scorer, CalibrationOptions(), fixed_sign=1)["red"]
    assert (fixed["component"], fixed["sign"]) == (3, 1)


def test_per_sample_directions_transfer_their_sign_and_unrelated_ones_lose() -> None:
    """Per-sample vectors with arbitrary signs: component 1 is ±b (sample's sign s_i) and raises red along +b;
    component 0 has a bigger effect, but its vectors are unrelated across samples (orthogonal), so no sign
    rule transfers it: the leave-one-out score must prefer component 1, and new samples get the sign of b."""
    n, dim = 8, 16
    g = torch.Generator().manual_seed(3)
    b = torch.randn(dim, generator=g, dtype=torch.float64)
    s = torch.tensor([1, -1, -1, 1, -1, 1, 1, -1], dtype=torch.float64)          # sample i's sign convention
    tau = torch.tensor([1, -1, 1, -1, 1, -1, 1, -1], dtype=torch.float64)        # component 0: balanced effects
    vectors = {0: torch.eye(dim, dtype=torch.float64)[:n], 1: s[:, None] * b[None] + 0.1 * torch.randn(n, dim, generator=g,
                                                                                                      dtype=torch.float64)}
    originals = _images(n, 1)

    def render(j: int, strengths: torch.Tensor) -> torch.Tensor:
        per_unit = 0.3 * tau if j == 0 else 0.2 * s  # red change along the sample's own +v_{j,i}
        return originals + _shift(0, strengths * per_unit)

    target = CalibrationTarget(originals, render, [0, 1], vectors=lambda j: vectors[j])
    scorer = make_scorer(ScorerSpec(kind="test-calibration-channel"))
    record = calibrate(target, {"red": RED}, scorer, CalibrationOptions(n_samples=n))["red"]
    assert record["component"] == 1 and record["sign"] is None
    assert record["candidates"]["gain"][0] == pytest.approx(0.0, abs=1e-12)  # no transferable sign
    assert record["gain"] == pytest.approx(0.2)
    for i in range(n):
        assert aligned_sign(record, vectors[1][i]) == int(s[i])
    # A new sample with either convention is edited along +b.
    assert aligned_sign(record, b) == 1 and aligned_sign(record, -b) == -1
    with pytest.raises(ValueError, match="per-sample"):
        aligned_sign(record)


def test_options_are_validated_up_front() -> None:
    for bad, key in (({"n_samples": 0}, "n_samples"), ({"strengths": [0.5, -1.0]}, "strengths"),
                     ({"strengths": []}, "strengths"), ({"max_components": 0}, "max_components")):
        with pytest.raises(ConfigError, match=f"calibration.{key}"):
            from_dict(HSpacePCAOptions, {"calibration": bad}, prefix="options")
    with pytest.raises(ConfigError, match=r"options.scorer.kind='orcale'"):
        from_dict(JacobianOptions, {"scorer": {"kind": "orcale"}}, prefix="options")
    with pytest.raises(ConfigError, match="options.component"):
        from_dict(HSpacePCAOptions, {"component": "best"}, prefix="options")
    with pytest.raises(ConfigError, match="options.select_strength"):
        from_dict(ParkOptions, {"select_strength": 1.0}, prefix="options")
    assert CalibrationOptions(max_components=2).components(5) == [0, 1]
    assert CalibrationOptions().components(3) == [0, 1, 2]


# -- seeds ---------------------------------------------------------------------------------------

def test_calibration_seeds_cannot_be_evaluated_seeds() -> None:
    seeds = calibration_seeds(123, 64, "hspace-pca")
    assert len(set(seeds)) == 64 and min(seeds) >= CALIBRATION_SEED_BASE == 2 ** STABLE_SEED_BITS
    assert max(seeds) < 2 ** (STABLE_SEED_BITS + 1)  # torch generators take them (< 2^64)
    # Evaluated noise seeds are stable_seeds, which never reach 2^STABLE_SEED_BITS.
    noise = [WorkUnit("m", "world-ddpm", "world", "circle-large", "large", 1.0, k).noise_seed for k in range(2000)]
    assert max(noise) < CALIBRATION_SEED_BASE and not set(noise) & set(seeds)
    assert max(stable_seed("x", k) for k in range(20000)) < 2 ** STABLE_SEED_BITS
    assert max(stable_seed("x", k) for k in range(20000)) > 2 ** (STABLE_SEED_BITS - 1)  # the bound is tight


def test_prepare_samples_only_its_own_seeds(micro, monkeypatch) -> None:
    """Every sample prepare draws (PCA fit, calibration) has a seed no evaluated unit has; the calibration's
    are exactly calibration_seeds, and none is also a fitting seed."""
    import methods._common
    import methods._hspace

    drawn: dict[str, list[int]] = {"fit": [], "calibration": []}
    for module, kind in ((methods._hspace, "fit"), (methods._common, "calibration")):
        original = module.initial_noise

        def spy(seeds, *args, _original=original, _kind=kind, **kw):
            drawn[_kind].extend(int(s) for s in seeds)
            return _original(seeds, *args, **kw)

        monkeypatch.setattr(module, "initial_noise", spy)
    item = SuiteItem(id="x", attribute="red")
    suite = Suite(name="s", version=1, items=(item,), attributes={"red": RED})
    opts = HSpacePCAOptions(n_samples=4, n_components=2, batch_size=4, scorer=ScorerSpec(kind="test-calibration-channel"),
                            calibration=CalibrationOptions(n_samples=3))
    HSpacePCA(opts).prepare(micro, PrepareContext(suite, SamplerConfig(num_steps=3), seed=5))
    assert set(drawn["calibration"]) == set(calibration_seeds(5, 3, "hspace-pca"))
    assert not set(drawn["calibration"]) & set(drawn["fit"])
    evaluated = {WorkUnit("hspace-pca", "micro", "s", "x", "red", st, k).noise_seed for k in range(500) for st in (1.0,)}
    assert not (set(drawn["calibration"]) | set(drawn["fit"])) & evaluated


# -- the methods ---------------------------------------------------------------------------------

SAMPLER = SamplerConfig(num_steps=3, eta=0.0)
ITEM = SuiteItem(id="x", attribute="planted")
SUITE = Suite(name="s", version=1, items=(ITEM,), attributes={"planted": Attribute("planted", "not planted")})
PLANTED, GAMMA = 1, 3.0


def _plant(micro, method_cls, manual_opts, tag: str, ctx: PrepareContext) -> None:
    """TARGETS = the method's own manual edit of component PLANTED with sign − on the calibration samples."""
    manual = method_cls(manual_opts)
    state = manual.prepare(micro, ctx)
    requests = [EditRequest(f"c{i}", ITEM, -GAMMA, s) for i, s in enumerate(calibration_seeds(ctx.seed, 3, tag))]
    outs = manual.edit(micro, state, requests, SAMPLER)
    TARGETS["images"] = torch.stack([o.edited for o in outs])
    originals = torch.stack([o.original for o in outs])
    assert (TARGETS["images"] - originals).abs().max() > 1e-3  # the planted edit is visible


def test_hspace_pca_calibration_finds_the_planted_pc(micro) -> None:
    ctx = PrepareContext(SUITE, SAMPLER, seed=9)
    common = dict(n_samples=6, n_components=3, batch_size=6)
    _plant(micro, HSpacePCA, HSpacePCAOptions(**common, component=PLANTED), "hspace-pca", ctx)
    auto = HSpacePCA(HSpacePCAOptions(**common, scorer=ScorerSpec(kind="test-nearest-target"),
                                      calibration=CalibrationOptions(n_samples=3, strengths=(GAMMA,))))
    state = auto.prepare(micro, ctx)
    record = state["calibration"][""]["planted"]
    assert (record["component"], record["sign"]) == (PLANTED, -1)
    assert record["gain"] == max(record["candidates"]["gain"]) > 0
    # Edits apply it: a request's Δh is −strength along PC 1, and its row says so.
    out = auto.edit(micro, state, [EditRequest("u", ITEM, 2.0, 77)], SAMPLER)[0]
    manual = HSpacePCA(HSpacePCAOptions(**common, component=PLANTED)).edit(
        micro, state, [EditRequest("u", ITEM, -2.0, 77)], SAMPLER)[0]
    assert torch.equal(out.edited, manual.edited)
    assert (out.info["component"], out.info["sign"], out.info["calibrated"]) == (PLANTED, -1, True)
    assert out.info["calibration_gain"] == record["gain"] and manual.info["calibrated"] is False


def test_jacobian_reference_calibration_finds_the_planted_vector(micro) -> None:
    ctx = PrepareContext(SUITE, SAMPLER, seed=4)
    common = dict(k=2, directions_from="reference", convergence=StopCriterion(max_iters=4))
    _plant(micro, JacobianSubspace, JacobianOptions(**common, component=PLANTED), "jacobian", ctx)
    auto = JacobianSubspace(JacobianOptions(**common, scorer=ScorerSpec(kind="test-nearest-target"),
                                            calibration=CalibrationOptions(n_samples=3, strengths=(GAMMA,))))
    state = auto.prepare(micro, ctx)
    record = state["calibration"][""]["planted"]
    assert (record["component"], record["sign"]) == (PLANTED, -1)
    out = auto.edit(micro, state, [EditRequest("u", ITEM, 1.0, 31)], SAMPLER)[0]
    assert (out.info["component"], out.info["sign"], out.info["calibrated"]) == (PLANTED, -1, True)


def test_per_sample_methods_apply_the_sign_of_their_own_vector(micro) -> None:
    """jacobian (directions_from: sample) and park: each request's v_k gets sign ⟨v_k, reference⟩, and the image
    equals the manual edit with that component and sign."""
    scorer = ScorerSpec(kind="test-calibration-channel")
    suite = Suite(name="s", version=1, items=(ITEM,), attributes={"planted": Attribute("red", "green")})
    ctx = PrepareContext(suite, SAMPLER, seed=2)
    requests = [EditRequest("a", ITEM, 2.0, 40), EditRequest("b", ITEM, 2.0, 41)]

    jac_common = dict(k=2, convergence=StopCriterion(max_iters=3))
    jac = JacobianSubspace(JacobianOptions(**jac_common, scorer=scorer, calibration=CalibrationOptions(n_samples=3)))
    state = jac.prepare(micro, ctx)
    record = state["calibration"][""]["planted"]
    assert record["reference"] is not None and record["reference"].shape == (8, 4, 4)
    for r, out in zip(requests, jac.edit(micro, state, requests, SAMPLER)):
        run = jac._run(micro, state, [r], SAMPLER)
        j = record["component"]
        assert out.info["sign"] == aligned_sign(record, run.dirs[0]["vectors"][j])
        manual = JacobianSubspace(JacobianOptions(**jac_common, component=j)).edit(
            micro, {}, [EditRequest(r.unit_key, ITEM, out.info["sign"] * r.strength, r.seed)], SAMPLER)[0]
        assert torch.equal(out.edited, manual.edited)

    park_common = dict(pca_rank=2, n_guidance=2, lam=0.1, convergence=StopCriterion(kind="vectors", max_iters=3))
    park = ParkPullback(ParkOptions(**park_common, scorer=scorer, calibration=CalibrationOptions(n_samples=3)))
    state = park.prepare(micro, ctx)
    record = state["calibration"][""]["planted"]
    assert record["reference"].shape == (3, 16, 16)
    for r, out in zip(requests, park.edit(micro, state, requests, SAMPLER)):
        batch = park._batch(micro, [r], SAMPLER)
        j = record["component"]
        sign = aligned_sign(record, batch.bases[0].V[j])
        assert (out.info["component"], out.info["sign"], out.info["calibrated"]) == (j, sign, True)
        manual = ParkPullback(ParkOptions(**park_common, component=j,
                                          sign="positive" if sign > 0 else "negative")).edit(micro, {}, [r], SAMPLER)[0]
        assert torch.equal(out.edited, manual.edited)


def test_manual_component_needs_no_scorer(micro) -> None:
    """An int component keeps the old behaviour: no calibration, sign +; the default (CLIP) scorer is never built,
    which would fail here for want of weights."""
    opts = HSpacePCAOptions(n_samples=4, n_components=2, batch_size=4, component=1)
    state = HSpacePCA(opts).prepare(micro, PrepareContext(SUITE, SAMPLER, seed=0))
    assert "calibration" not in state
    deltas, info = HSpacePCA(opts).deltas(state, [EditRequest("u", ITEM, 1.5, 0)], micro)
    group = state["groups"][""]
    sigma = group["singular_values"][1] / (group["n_samples"] - 1) ** 0.5
    torch.testing.assert_close(deltas[0], 1.5 * sigma.float().view(-1, 1, 1, 1) * group["components"][1])
    assert (info[0]["component"], info[0]["sign"], info[0]["calibrated"]) == (1, 1, False)
    assert JacobianSubspace(JacobianOptions(k=2, component=0)).prepare(micro, PrepareContext(SUITE, SAMPLER, 0)) == {}
    assert ParkPullback(ParkOptions(component=0, sign="negative")).prepare(micro, PrepareContext(SUITE, SAMPLER, 0)) == {}


# -- the world oracle as a scorer ------------------------------------------------------------------

def test_oracle_scorer_reads_the_attribute_target() -> None:
    from harness.world import Scene, render

    suite = load_suite("world")
    scenes = [Scene("circle", "green", "white", "large", "center", "middle"),
              Scene("square", "red", "blue", "small", "left", "middle")]
    images = torch.stack([torch.from_numpy(render(s)).permute(2, 0, 1).float() / 255 for s in scenes])
    oracle = make_scorer(ScorerSpec(kind="oracle"))
    expected = {"large": [1, 0], "red": [0, 1], "square": [0, 1], "left": [0, 1], "blue-bg": [0, 1]}
    for name, hits in expected.items():
        assert score_attribute(oracle, images, suite.attributes[name]).tolist() == hits, name
    with pytest.raises(ValueError, match="factor"):
        score_attribute(oracle, images, Attribute("a smile", "no smile"))


def test_oracle_scorer_reads_the_faces_world_when_told() -> None:
    from harness.world.faces.factors import Face
    from harness.world.faces.render import render

    suite = load_suite("faces_hspace")
    faces = [Face("smiling", "none", "young", "male", "hat", "light", "black", "blue"),
             Face("neutral", "glasses", "old", "female", "none", "dark", "blonde", "green")]
    images = torch.stack([torch.from_numpy(render(f)).permute(2, 0, 1).float() / 255 for f in faces])
    oracle = make_scorer(ScorerSpec(kind="oracle", options={"world": "faces"}))
    expected = {"smile": [1, 0], "glasses": [0, 1], "age": [0, 1], "gender": [1, 0], "hat": [1, 0]}
    for name, hits in expected.items():
        assert score_attribute(oracle, images, suite.attributes[name]).tolist() == hits, name
