"""SDEdit against diffusers' StableDiffusionImg2ImgPipeline (float64 truth), its options, real images through the
harness (the worker hands the image's own x_0 to the method), and the strength knob (t0 scaled per request)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from harness.config import SamplerConfig
from harness.diffusion import Schedule, strength_start
from harness.errors import ConfigError
from harness.hashing import stable_seed
from harness.images import load_image
from harness.schema import from_dict
from harness.suites import load_suite
from methods.base import EditRequest
from methods.sdedit import SDEdit, SDEditOptions
from tests.methods._reference import assert_matches, float32_noise, pipeline
from tests.methods.conftest import run_through_harness, to_uint8

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLER = SamplerConfig(num_steps=10, eta=0.0, guidance_scale=7.5)
ITEM = load_suite("world_real").items[0]


def _real_request(backbone, seed: int = 3) -> EditRequest:
    image, _ = load_image(ITEM.image, backbone.resolution)
    x0 = backbone.encode(image[None])[0]
    # x_T only feeds the unit's `original`; SDEdit edits x_0.
    x_T = torch.randn(backbone.state_shape(), generator=torch.Generator().manual_seed(1))
    return EditRequest("u", ITEM, 1.0, seed, x_T=x_T, x_0=x0)


def test_matches_diffusers_img2img(tiny_sd, monkeypatch) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img

    float32_noise(monkeypatch, pipeline_stable_diffusion_img2img)
    request = _real_request(tiny_sd)
    t0 = 0.6

    def reference(dtype: torch.dtype) -> torch.Tensor:
        pipe = pipeline(StableDiffusionImg2ImgPipeline, tiny_sd, dtype)
        g = torch.Generator().manual_seed(stable_seed("sdedit", request.seed))  # SDEdit's noise seed
        return pipe(prompt=ITEM.target_prompt, image=request.x_0[None].to(dtype), strength=t0,
                    num_inference_steps=SAMPLER.num_steps, guidance_scale=SAMPLER.guidance_scale, generator=g,
                    output_type="pt").images[0]

    ours = SDEdit(SDEditOptions(t0=t0)).edit(tiny_sd, {}, [request], SAMPLER)[0].edited
    # The nearest-grid-step reading of t0 (Schedule.step_index: t = 601 instead of 501 here) is one step off.
    assert strength_start(SAMPLER.num_steps, 0.7) == 3 and strength_start(SAMPLER.num_steps, t0) == 4
    wrong = SDEdit(SDEditOptions(t0=0.7)).edit(tiny_sd, {}, [request], SAMPLER)[0].edited
    assert_matches(ours, reference(torch.float32), reference(torch.float64), wrong)


def test_guidance_option_overrides_the_sampler(tiny_sd) -> None:
    request = _real_request(tiny_sd)
    default = SDEdit(SDEditOptions(t0=0.5)).edit(tiny_sd, {}, [request], SAMPLER)[0].edited
    same = SDEdit(SDEditOptions(t0=0.5, guidance_scale=7.5)).edit(tiny_sd, {}, [request], SAMPLER)[0].edited
    other = SDEdit(SDEditOptions(t0=0.5, guidance_scale=1.0)).edit(tiny_sd, {}, [request], SAMPLER)[0].edited
    assert torch.equal(default, same) and not torch.allclose(default, other, atol=1e-3)


@pytest.mark.parametrize("options", [{"t0": 0.0}, {"t0": 1.5}, {"t0": float("nan")}, {"guidance_scale": -1.0}])
def test_bad_options_are_refused(options) -> None:
    with pytest.raises(ConfigError):
        from_dict(SDEditOptions, options, prefix="options")


def test_a_grid_too_short_for_t0_is_refused() -> None:
    with pytest.raises(ValueError, match="t0 = 0.3 runs no step"):
        SDEdit(SDEditOptions(t0=0.3)).edit(None, {}, [], SamplerConfig(num_steps=3))
    # Whatever the strengths: a strength that would lengthen t0 does not make the configured t0 valid.
    with pytest.raises(ValueError, match="t0 = 0.3 runs no step"):
        SDEdit(SDEditOptions(t0=0.3)).edit(None, {}, [EditRequest("u", ITEM, 4.0, 0)], SamplerConfig(num_steps=3))
    assert strength_start(3, 1.0) == 0 and strength_start(3, 0.34) == 2


# -- the strength knob: t0(s) = min(1, |s| t0) ---------------------------------------------------------------------

def _requests(backbone, strength: float) -> list[EditRequest]:
    """A generated sample and a real image, at `strength`."""
    smile = load_suite("hspace_paper").item("smile")
    return [EditRequest("a", smile, strength, 11), replace(_real_request(backbone), strength=strength)]


def test_strength_scales_t0(tiny_sd) -> None:
    """Strength s with t0 = a is strength 1 with t0 = min(1, |s| a): the same images and info, byte for byte."""
    a = 0.5
    configured = SDEdit(SDEditOptions(t0=a)).edit(tiny_sd, {}, _requests(tiny_sd, 1.0), SAMPLER)
    for s in (0.6, 1.6, 3.0, -1.6):
        scaled = SDEdit(SDEditOptions(t0=a)).edit(tiny_sd, {}, _requests(tiny_sd, s), SAMPLER)
        expected = SDEdit(SDEditOptions(t0=min(1.0, abs(s) * a))).edit(tiny_sd, {}, _requests(tiny_sd, 1.0), SAMPLER)
        for got, want, base in zip(scaled, expected, configured):
            assert torch.equal(got.edited, want.edited) and torch.equal(got.original, want.original), s
            assert got.info == want.info, s
            assert torch.equal(got.original, base.original)
            # The strength does change the edit (t0 0.3, 0.8, 1 against 0.5), so the comparison above can fail.
            assert not torch.allclose(got.edited, base.edited, atol=1e-3), s


def test_strength_zero_returns_the_original(tiny_sd) -> None:
    """No step re-run (s = 0, or N |s| t0 < 1: 0.05 of 10 steps) is no edit; one step (0.1 of 10) is an edit."""
    opts = SDEditOptions(t0=0.5)
    for s in (0.0, 0.1, -0.1):
        for out in SDEdit(opts).edit(tiny_sd, {}, _requests(tiny_sd, s), SAMPLER):
            assert torch.equal(out.edited, out.original), s
            assert out.info == {"sdedit_start_t": None}
    for out in SDEdit(opts).edit(tiny_sd, {}, _requests(tiny_sd, 0.2), SAMPLER):
        assert not torch.allclose(out.edited, out.original, atol=1e-3)
        assert out.info["sdedit_start_t"] == Schedule.from_backbone(tiny_sd, SAMPLER.num_steps).timesteps[-1]


def test_mixed_strengths_batch_equals_per_request_runs(sd64) -> None:
    """Requests of different strengths in one batch: each gets the image it gets alone (float64 model: the batch
    changes float32 rounding only, far under 1e-6)."""
    paper = load_suite("hspace_paper")
    batch = [EditRequest("a", paper.item("smile"), 0.6, 11), replace(_real_request(sd64), strength=1.6),
             EditRequest("b", paper.item("gender"), 0.0, 12), EditRequest("c", paper.item("smile"), 1.0, 14)]
    method = SDEdit(SDEditOptions(t0=0.5))
    together = method.edit(sd64, {}, batch, SAMPLER)
    for request, out in zip(batch, together):
        (alone,) = method.edit(sd64, {}, [request], SAMPLER)
        torch.testing.assert_close(out.edited, alone.edited, rtol=0, atol=1e-6)
        torch.testing.assert_close(out.original, alone.original, rtol=0, atol=1e-6)
        assert out.info == alone.info
    # Another strength's image is far outside that tolerance: the comparison can fail.
    (other,) = method.edit(sd64, {}, [replace(batch[0], strength=1.0)], SAMPLER)
    assert not torch.allclose(together[0].edited, other.edited, atol=1e-3)


def test_real_images_through_the_harness_edit_the_image_itself(tmp_path, tiny_sd) -> None:
    sampler = {"num_steps": 4, "eta": 0.0, "guidance_scale": 7.5}
    cfg, rows = run_through_harness(tmp_path, 1, models=["tiny-sd"], suites=["world_real"], items=[ITEM.id],
                                    methods=[{"name": "sdedit", "options": {"t0": 0.5}}], sampler=sampler)
    row = rows.iloc[0]
    (inversion,) = (cfg.run_dir / "artifacts").glob("inversion-*.pt")
    x_T = torch.load(inversion, weights_only=False)["x_T"][0]
    expected = SDEdit(SDEditOptions(t0=0.5)).edit(
        tiny_sd, {}, [EditRequest("u", ITEM, row["strength"], int(row["noise_seed"]), x_T=x_T,
                                  x_0=_real_request(tiny_sd).x_0)], SamplerConfig(**sampler))[0]
    edited, _ = load_image(cfg.run_dir / row["edited_path"], tiny_sd.resolution)
    assert torch.equal(to_uint8(edited), to_uint8(expected.edited))
