"""DiffEdit against diffusers' StableDiffusionDiffEditPipeline on tiny-sd (mask exactly, image to a float64-derived
tolerance), the paper's background convention, its options, and the strength knob (encode_ratio scaled per
request)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from harness.config import SamplerConfig
from harness.errors import ConfigError
from harness.hashing import stable_seed
from harness.images import load_image
from harness.schema import from_dict
from harness.suites import load_suite
from methods.base import EditRequest
from methods.diffedit import DiffEdit, DiffEditOptions
from tests.methods._reference import assert_matches, float32_noise, pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLER = SamplerConfig(num_steps=10, eta=0.0, guidance_scale=7.5)
ITEM = load_suite("world_real").items[0]
# The diffusers example's inversion (source prompt, CFG) and a mask of 4 maps; "previous" is diffusers' blend.
OPTIONS = {"n_masks": 4, "mask_encode_strength": 0.5, "encode_ratio": 0.8, "inversion_prompt": "source",
           "inversion_guidance": 3.0, "background_step": "previous"}


@pytest.fixture(scope="module")
def request_(tiny_sd) -> EditRequest:
    image, _ = load_image(ITEM.image, tiny_sd.resolution)
    x_T = torch.randn(tiny_sd.state_shape(), generator=torch.Generator().manual_seed(1))
    return EditRequest("u", ITEM, 1.0, 8, x_T=x_T, x_0=tiny_sd.encode(image[None])[0])


def _ours(backbone, request: EditRequest, **overrides) -> tuple[torch.Tensor, torch.Tensor]:
    method = DiffEdit(from_dict(DiffEditOptions, {**OPTIONS, **overrides}, prefix="options"))
    mask, state = method.edit_states(backbone, [request], request.x_0[None].float(), SAMPLER)
    return mask, backbone.decode(state)[0]


def _diffusers(backbone, request: EditRequest, dtype: torch.dtype, mask: torch.Tensor | None = None):
    """(mask, image) from diffusers' three calls; `mask` given: use it instead of generate_mask's."""
    from diffusers import DDIMInverseScheduler, StableDiffusionDiffEditPipeline

    pipe = pipeline(StableDiffusionDiffEditPipeline, backbone, dtype,
                    inverse_scheduler=DDIMInverseScheduler.from_config(backbone.scheduler.config))
    image = request.x_0[None].to(dtype)
    common = {"num_inference_steps": SAMPLER.num_steps}
    if mask is None:
        g = torch.Generator().manual_seed(stable_seed("diffedit-mask", request.seed))  # our mask noise seed
        mask = torch.from_numpy(pipe.generate_mask(
            image=image, source_prompt=ITEM.prompt, target_prompt=ITEM.target_prompt, generator=g,
            num_maps_per_mask=OPTIONS["n_masks"], mask_encode_strength=OPTIONS["mask_encode_strength"],
            guidance_scale=SAMPLER.guidance_scale, **common))
    latents = pipe.invert(prompt=ITEM.prompt, image=image, inpaint_strength=OPTIONS["encode_ratio"],
                          guidance_scale=OPTIONS["inversion_guidance"], **common).latents
    out = pipe(prompt=ITEM.target_prompt, mask_image=mask, image_latents=latents,
               inpaint_strength=OPTIONS["encode_ratio"], guidance_scale=SAMPLER.guidance_scale, output_type="pt",
               **common).images[0]
    return mask, out


def test_matches_diffusers_diffedit_pipeline(tiny_sd, request_, monkeypatch) -> None:
    from diffusers.pipelines.deprecated.stable_diffusion_diffedit import pipeline_stable_diffusion_diffedit

    float32_noise(monkeypatch, pipeline_stable_diffusion_diffedit)
    mask, ours = _ours(tiny_sd, request_)
    ref_mask, ref32 = _diffusers(tiny_sd, request_, torch.float32)
    mask64, _ = _diffusers(tiny_sd, request_, torch.float64)
    assert 0.0 < float(mask.mean()) < 1.0, "a trivial mask cannot tell conventions apart"
    assert torch.equal(mask[0, 0], ref_mask[0].to(mask.dtype)) and torch.equal(ref_mask, mask64)
    # The float64 truth decodes with the same mask (binary: float32 rounding shows only in the image).
    _, truth = _diffusers(tiny_sd, request_, torch.float64, mask=ref_mask)
    _, wrong = _ours(tiny_sd, request_, background_step="same")
    assert_matches(ours, ref32, truth, wrong)


def test_paper_background_is_the_input_exactly(tiny_sd, request_) -> None:
    method = DiffEdit(from_dict(DiffEditOptions, {"n_masks": 2}, prefix="options"))
    x0 = request_.x_0[None].float()
    mask, state = method.edit_states(tiny_sd, [request_], x0, SAMPLER)
    assert 0.0 < float(mask.mean()) < 1.0
    keep = (mask == 0).expand_as(state)
    assert torch.equal(state[keep], x0[keep])
    assert not torch.allclose(state[~keep], x0[~keep], atol=1e-3)  # the masked region is edited


def test_mask_is_per_request(tiny_sd, request_) -> None:
    other = EditRequest("v", load_suite("world_real").items[3], 1.0, 9)
    method = DiffEdit(from_dict(DiffEditOptions, {"n_masks": 2}, prefix="options"))
    x_other = torch.randn(1, *tiny_sd.state_shape(), generator=torch.Generator().manual_seed(2))
    alone, _ = method.edit_states(tiny_sd, [request_], request_.x_0[None].float(), SAMPLER)
    together, _ = method.edit_states(tiny_sd, [request_, other], torch.cat([request_.x_0[None], x_other]), SAMPLER)
    assert torch.equal(alone[0], together[0])


@pytest.mark.parametrize("options", [
    {"encode_ratio": 0.0}, {"mask_encode_strength": 1.2}, {"n_masks": 0}, {"mask_threshold_ratio": 0.0},
    {"inversion_guidance": -1.0}, {"guidance_scale": float("nan")}, {"background_step": "next"},
])
def test_bad_options_are_refused(options) -> None:
    with pytest.raises(ConfigError):
        from_dict(DiffEditOptions, options, prefix="options")


# -- the strength knob: r(s) = min(1, |s| r) ------------------------------------------------------------------------

def _pair(request: EditRequest, strength: float) -> list[EditRequest]:
    """A generated sample and the real image, at `strength`."""
    return [EditRequest("a", load_suite("hspace_paper").item("smile"), strength, 11), replace(request, strength=strength)]


def _edit(backbone, requests: list[EditRequest], **options):
    return DiffEdit(from_dict(DiffEditOptions, {"n_masks": 2, **options}, prefix="options")).edit(
        backbone, {}, requests, SAMPLER)


def test_strength_scales_encode_ratio(tiny_sd, request_) -> None:
    """Strength s with encode_ratio r is strength 1 with encode_ratio min(1, |s| r): the same images and info, byte for
    byte (the mask is not scaled)."""
    r = 0.8
    configured = _edit(tiny_sd, _pair(request_, 1.0), encode_ratio=r)
    for s in (0.5, 1.5, -0.5):
        scaled = _edit(tiny_sd, _pair(request_, s), encode_ratio=r)
        expected = _edit(tiny_sd, _pair(request_, 1.0), encode_ratio=min(1.0, abs(s) * r))
        for got, want, base in zip(scaled, expected, configured):
            assert torch.equal(got.edited, want.edited) and torch.equal(got.original, want.original), s
            assert got.info == want.info == base.info, s  # the same mask whatever the strength
            # The strength does change the edit (r 0.4 and 1 against 0.8), so the comparison above can fail.
            assert not torch.allclose(got.edited, base.edited, atol=1e-3), s


def test_strength_zero_returns_the_original(tiny_sd, request_) -> None:
    """No step re-run (s = 0, or N |s| r < 1: 0.08 of 10 steps) is no edit, with the mask still recorded; one step
    (0.16 of 10) is an edit (a small one: the last step, in the masked region only)."""
    base = _edit(tiny_sd, _pair(request_, 1.0))
    for s in (0.0, 0.1):
        for out, ref in zip(_edit(tiny_sd, _pair(request_, s)), base):
            assert torch.equal(out.edited, out.original), s
            assert out.info == ref.info
        method = DiffEdit(from_dict(DiffEditOptions, {"n_masks": 2}, prefix="options"))
        x0 = request_.x_0[None].float()
        _, state = method.edit_states(tiny_sd, [replace(request_, strength=s)], x0, SAMPLER)
        assert torch.equal(state, x0)  # edit_states leaves the input as it is
    for out in _edit(tiny_sd, _pair(request_, 0.2)):
        assert not torch.equal(out.edited, out.original)


def test_mixed_strengths_batch_equals_per_request_runs(sd64) -> None:
    """Requests of different strengths in one batch: each gets the image it gets alone (float64 model: the batch
    changes float32 rounding only, far under 1e-6)."""
    image, _ = load_image(ITEM.image, sd64.resolution)
    real = EditRequest("r", ITEM, 1.5, 8, x_T=torch.zeros(sd64.state_shape()), x_0=sd64.encode(image[None])[0])
    paper = load_suite("hspace_paper")
    batch = [EditRequest("a", paper.item("smile"), 0.5, 11), real, EditRequest("b", paper.item("gender"), 0.0, 12),
             EditRequest("c", paper.item("smile"), 1.0, 14)]
    together = _edit(sd64, batch)
    for request, out in zip(batch, together):
        (alone,) = _edit(sd64, [request])
        torch.testing.assert_close(out.edited, alone.edited, rtol=0, atol=1e-6)
        torch.testing.assert_close(out.original, alone.original, rtol=0, atol=1e-6)
        assert out.info == alone.info
    # Another strength's image is far outside that tolerance: the comparison can fail.
    (other,) = _edit(sd64, [replace(batch[0], strength=1.0)])
    assert not torch.allclose(together[0].edited, other.edited, atol=1e-3)
