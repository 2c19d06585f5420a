"""DiffEdit against diffusers' StableDiffusionDiffEditPipeline on tiny-sd (mask exactly, image to a float64-derived
tolerance), the paper's background convention, and its options."""
from __future__ import annotations

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
