"""Supervised h-space directions (Haas et al. Sec. V, eqs. 11-12): selection, mean difference, projection, edits."""
from __future__ import annotations

import pytest
import torch

from harness.config import SamplerConfig
from harness.diffusion import Schedule, Trace, denoise, initial_noise
from harness.suites import Attribute, Suite, SuiteItem
from methods.base import EditRequest, PrepareContext
from methods.supervised import Supervised, SupervisedOptions, removal_sets, select_examples
from methods._hspace import project_out, sample_seeds
from methods._scorers import ScorerSpec, register_scorer
from tests.methods.conftest import assert_strength_zero_unedited, run_through_harness, to_uint8

CHANNELS = {"red": 0, "green": 1, "blue": 2}


@register_scorer("test-prompt-channel")
def prompt_channel_scorer(device="cpu"):
    """Hand-built scorer: the mean of the colour channel named by the positive prompt."""
    return lambda images, positive, negative=None: images[:, CHANNELS[positive]].float().mean(dim=(1, 2))


def rel_inner(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    return float((a @ b).abs() / (a.norm() * b.norm()))


# -- pure pieces -------------------------------------------------------------------------------------

def test_projection_is_orthogonal_and_equals_the_explicit_projector() -> None:
    g = torch.Generator().manual_seed(0)
    removed = [torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64) for _ in range(3)]
    v0 = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64) + 2 * removed[0] - removed[2]
    v = project_out(v0, removed)
    assert v.shape == v0.shape and v.dtype == v0.dtype
    for r in removed:
        assert rel_inner(v, r) < 1e-5
    V = torch.stack([r.reshape(-1) for r in removed], dim=1)
    P = torch.eye(V.shape[0], dtype=torch.float64) - V @ torch.linalg.inv(V.T @ V) @ V.T
    torch.testing.assert_close(v.reshape(-1), P @ v0.reshape(-1))
    # One direction: v1 − ⟨v1,v2⟩/‖v2‖² v2 (paper, Sec. V-c); not renormalised.
    v1, v2 = v0, removed[1]
    torch.testing.assert_close(project_out(v1, [v2]), v1 - (v1 * v2).sum() / (v2 * v2).sum() * v2)
    # Linearly dependent removed directions: still the projection onto the complement of their span.
    dep = project_out(v0, [removed[0], removed[1], removed[0] + removed[1]])
    torch.testing.assert_close(dep, project_out(v0, removed[:2]))
    # float32 trajectories keep their dtype and stay orthogonal to 1e-5 relative.
    v32 = project_out(v0.float(), [r.float() for r in removed])
    assert v32.dtype == torch.float32 and all(rel_inner(v32, r) < 1e-5 for r in removed)
    assert torch.equal(project_out(v0, []), v0)


def test_select_examples_takes_top_and_bottom_with_stable_ties() -> None:
    scores = torch.tensor([0.5, 0.9, 0.1, 0.9, 0.1, 0.3])
    assert select_examples(scores, 2) == ([1, 3], [2, 4])
    assert select_examples(scores, 3) == ([1, 3, 0], [2, 4, 5])


def test_removal_sets() -> None:
    attrs = ["a", "b", "c"]
    assert removal_sets(attrs, None) is None
    assert removal_sets(attrs, "all_others") == {"a": ["b", "c"], "b": ["a", "c"], "c": ["a", "b"]}
    assert removal_sets(attrs, ("b",)) == {"a": ["b"], "b": [], "c": ["b"]}
    assert removal_sets(attrs, {"a": ("b", "c")}) == {"a": ["b", "c"], "b": [], "c": []}


def test_options_refuse_overlapping_examples() -> None:
    from harness.errors import ConfigError
    from harness.schema import from_dict

    with pytest.raises(ConfigError):
        from_dict(SupervisedOptions, {"n_samples": 10, "n_examples": 6})
    opts = from_dict(SupervisedOptions, {"disentangle_from": ["age"], "scorer": {"kind": "channel-mean"}})
    assert opts.disentangle_from == ("age",) and opts.scorer == ScorerSpec("channel-mean")


# -- on the tiny pixel UNet -----------------------------------------------------------------------

SAMPLER = SamplerConfig(num_steps=3, eta=0.5)
SUITE = Suite(
    name="rgb", version=1,
    items=tuple(SuiteItem(id=a, attribute=a, prompt="a photo") for a in CHANNELS),
    attributes={a: Attribute(positive=a, negative="grey") for a in CHANNELS},
)
M, N = 8, 2


@pytest.fixture(scope="module")
def state(tiny_unet):
    opts = SupervisedOptions(n_samples=M, n_examples=N, batch_size=3, scorer=ScorerSpec("test-prompt-channel"),
                             disentangle_from="all_others")
    return Supervised(opts).prepare(tiny_unet, PrepareContext(suite=SUITE, sampler=SAMPLER, seed=3))


def test_mean_difference_uses_the_scorers_top_and_bottom_samples(tiny_unet, state) -> None:
    # Independent reference: every sample denoised alone, scored by hand, eq. (11) by hand.
    schedule = Schedule.from_backbone(tiny_unet, SAMPLER.num_steps)
    images, hs = [], []
    for seed in sample_seeds(3, M, "supervised"):
        x_T, z = initial_noise([seed], tiny_unet.state_shape(), SAMPLER.num_steps, SAMPLER.eta)
        trace = Trace(record_x=False)
        images.append(tiny_unet.decode(denoise(tiny_unet, x_T, schedule, eta=SAMPLER.eta, noises=z, trace=trace)))
        hs.append(torch.stack(trace.hs, dim=1))
    images, hs = torch.cat(images), torch.cat(hs)
    group = state["groups"][""]
    directions = group["directions"]
    for attr, c in CHANNELS.items():
        score = images[:, c].mean(dim=(1, 2))
        order = torch.argsort(score, descending=True)
        assert sorted(group["positives"][attr]) == sorted(order[:N].tolist())
        assert sorted(group["negatives"][attr]) == sorted(order[-N:].tolist())
        ref = hs[order[:N]].mean(0) - hs[order[-N:]].mean(0)
        assert directions[attr].shape == ref.shape == (SAMPLER.num_steps, *hs.shape[2:])
        torch.testing.assert_close(directions[attr], ref, atol=1e-5 * float(ref.abs().max()), rtol=1e-4)
    # Eq. (12) against all others, over the flattened trajectory.
    for attr in CHANNELS:
        others = [directions[b] for b in CHANNELS if b != attr]
        v = group["disentangled"][attr]
        assert all(rel_inner(v, o) < 1e-5 for o in others)
        V = torch.stack([o.reshape(-1).double() for o in others], dim=1)
        v0 = directions[attr].reshape(-1).double()
        explicit = v0 - V @ torch.linalg.solve(V.T @ V, V.T @ v0)
        torch.testing.assert_close(v.reshape(-1).double(), explicit, atol=1e-5 * float(v0.abs().max()), rtol=1e-4)


def test_prepare_refuses_disentangling_from_unknown_attributes(tiny_unet) -> None:
    from harness.errors import ConfigError

    opts = SupervisedOptions(n_samples=2, n_examples=1, scorer=ScorerSpec("channel-mean"), disentangle_from=("cyan",))
    with pytest.raises(ConfigError, match="options.disentangle_from") as err:
        Supervised(opts).prepare(tiny_unet, PrepareContext(suite=SUITE, sampler=SAMPLER, seed=0))
    assert err.value.value == "cyan" and "red" in err.value.allowed


def test_strength_zero_is_byte_identical_and_edits_are_deterministic(tiny_unet, state) -> None:
    item = SUITE.item("red")
    requests = [EditRequest("a", item, 0.0, 9), EditRequest("b", item, 3.0, 9)]
    out = Supervised(SupervisedOptions(n_samples=M, n_examples=N, disentangle_from="all_others")).edit(
        tiny_unet, state, requests, SAMPLER)
    assert torch.equal(to_uint8(out[0].edited), to_uint8(out[0].original))
    assert not torch.equal(to_uint8(out[1].edited), to_uint8(out[1].original))
    assert out[1].info["disentangled"] is True
    again = Supervised(SupervisedOptions(n_samples=M, n_examples=N, disentangle_from="all_others")).edit(
        tiny_unet, state, requests, SAMPLER)
    assert all(torch.equal(a.edited, b.edited) and torch.equal(a.original, b.original) for a, b in zip(out, again))
    # Without disentangle_from the original direction is used.
    plain = Supervised(SupervisedOptions(n_samples=M, n_examples=N)).edit(
        tiny_unet, {"groups": {"": {"directions": state["groups"][""]["directions"]}}}, requests[1:], SAMPLER)
    assert plain[0].info["disentangled"] is False
    assert not torch.equal(plain[0].edited, out[1].edited)


# -- end to end through the harness --------------------------------------------------------------

def test_end_to_end_on_tiny_unet_and_tiny_sd(tmp_path) -> None:
    cfg, rows = run_through_harness(
        tmp_path, 8, run_id="supervised", models=["tiny-unet", "tiny-sd"], items=["smile", "age"],
        strengths=[0.0, 1.0], sampler={"num_steps": 3, "eta": 0.0, "guidance_scale": 7.5},
        methods=[{"name": "supervised", "options": {"n_samples": 4, "n_examples": 2, "batch_size": 4,
                                                     "scorer": {"kind": "channel-mean"},
                                                     "disentangle_from": {"smile": ["gender"]}}}])
    assert_strength_zero_unedited(cfg, rows)


def test_directions_from_labelled_real_image_folders(tmp_path, tiny_unet) -> None:
    """Haas et al. SM F: v = mean h(positives) − mean h(negatives) of inverted real images, checked against
    the same trajectories recorded by hand (invert, regenerate with a Trace)."""
    import shutil
    from pathlib import Path

    from harness.config import SamplerConfig
    from harness.diffusion import Schedule, Trace, ddim_invert, denoise
    from harness.images import load_image
    from harness.suites import load_suite, select_items
    from methods.base import PrepareContext
    from methods.supervised import Supervised, SupervisedOptions

    src = Path(__file__).resolve().parents[2] / "configs" / "suites" / "world_real"
    for name, files in (("pos", ["scene0.png", "scene1.png"]), ("neg", ["scene2.png"])):
        (tmp_path / name).mkdir()
        for f in files:
            shutil.copy(src / f, tmp_path / name / f)
    sampler = SamplerConfig(num_steps=3, eta=0.0)
    suite = select_items(load_suite("hspace_paper"), ("smile",))
    opts = SupervisedOptions(n_samples=4, n_examples=1,
                             real_examples={"smile": {"positive": str(tmp_path / "pos"), "negative": str(tmp_path / "neg")}})
    from harness.schema import from_dict, to_dict

    opts = from_dict(SupervisedOptions, to_dict(opts))
    state = Supervised(opts).prepare(tiny_unet, PrepareContext(suite, sampler, seed=0))
    got = next(iter(state["groups"].values()))["directions"]["smile"]

    def h_of(path):
        image, _ = load_image(path, 32)
        s = Schedule.from_backbone(tiny_unet, 3)
        trace = Trace(record_x=False)
        denoise(tiny_unet, ddim_invert(tiny_unet, tiny_unet.encode(image[None]), s), s, trace=trace)
        return torch.stack(trace.hs, dim=1)[0].double()

    expected = (h_of(src / "scene0.png") + h_of(src / "scene1.png")) / 2 - h_of(src / "scene2.png")
    # The method inverts the two positives as one batch, the reference one at a time: batch-size rounding only.
    torch.testing.assert_close(got.double(), expected, rtol=1e-3, atol=1e-4)
