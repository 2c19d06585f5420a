"""SEGA against diffusers' SemanticStableDiffusionPipeline on tiny-sd (float64 truth), and its options."""
from __future__ import annotations

import pytest
import torch

from harness.config import SamplerConfig
from harness.diffusion import initial_noise
from harness.errors import ConfigError
from harness.schema import from_dict
from harness.suites import load_suite
from methods.base import EditRequest, PrepareContext
from methods.sega import SEGA, SEGAOptions
from tests.methods._reference import assert_matches, pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLER = SamplerConfig(num_steps=10, eta=0.0, guidance_scale=7.5)
SUITE = load_suite("world")
ITEM = SUITE.item("circle-large")
SEED = 5

# (options, strength): attribute concepts (one reversed) with momentum; the target prompt, reversed by a
# negative strength, with a cool-down. Thresholds with λ·(16·16 − 1) not an integer: there the quantile is an
# element of |ψ| itself, which the float64 pipeline rounds to float32 (see the module docstring of methods/sega.py)
# and so keeps or drops depending on the rounding direction, a difference of a whole element.
CASES = {
    "attribute": ({"warmup_steps": 2, "threshold": 0.9, "momentum_scale": 0.3, "momentum_beta": 0.6}, 1.5),
    "target-reversed": ({"concepts": "target", "warmup_steps": 1, "cooldown_steps": 6, "threshold": 0.85,
                         "edit_guidance_scale": 4.0}, -1.0),
}


def _ours(backbone, options: dict, strength: float) -> torch.Tensor:
    method = SEGA(from_dict(SEGAOptions, options, prefix="options"))
    state = method.prepare(backbone, PrepareContext(SUITE, SAMPLER, 0))
    return method.edit(backbone, state, [EditRequest("u", ITEM, strength, SEED)], SAMPLER)[0].edited


def _diffusers(backbone, dtype: torch.dtype, options: dict, strength: float) -> torch.Tensor:
    from diffusers import SemanticStableDiffusionPipeline

    opts = from_dict(SEGAOptions, options, prefix="options")
    attribute = SUITE.attributes[ITEM.attribute]
    concepts, reverse = (([ITEM.target_prompt], [False]) if opts.concepts == "target"
                         else ([attribute.positive, attribute.negative], [False, True]))
    if strength < 0:
        reverse = [not r for r in reverse]
    x_T, _ = initial_noise([SEED], backbone.state_shape(), SAMPLER.num_steps, 0.0)
    pipe = pipeline(SemanticStableDiffusionPipeline, backbone, dtype)
    return pipe(prompt=ITEM.prompt, latents=x_T.to(dtype), num_inference_steps=SAMPLER.num_steps,
                guidance_scale=SAMPLER.guidance_scale, output_type="pt", editing_prompt=concepts,
                reverse_editing_direction=reverse, edit_guidance_scale=abs(strength) * opts.edit_guidance_scale,
                edit_warmup_steps=opts.warmup_steps, edit_cooldown_steps=opts.cooldown_steps,
                edit_threshold=opts.threshold, edit_momentum_scale=opts.momentum_scale,
                edit_mom_beta=opts.momentum_beta).images[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_diffusers_semantic_pipeline(tiny_sd, case: str) -> None:
    options, strength = CASES[case]
    ours = _ours(tiny_sd, options, strength)
    # The momentum is the convention easiest to get wrong (when it is added, what it accumulates).
    wrong = _ours(tiny_sd, {**options, "momentum_scale": 0.0 if options.get("momentum_scale") else 0.5}, strength)
    truth = _diffusers(tiny_sd, torch.float64, options, strength)
    assert_matches(ours, _diffusers(tiny_sd, torch.float32, options, strength), truth, wrong)


def test_strength_scales_and_reverses_the_edit(tiny_sd) -> None:
    options = CASES["attribute"][0]
    plus, minus, zero = (_ours(tiny_sd, options, s) for s in (1.0, -1.0, 0.0))
    method = SEGA(from_dict(SEGAOptions, options, prefix="options"))
    original = method.edit(tiny_sd, method.prepare(tiny_sd, PrepareContext(SUITE, SAMPLER, 0)),
                           [EditRequest("u", ITEM, 1.0, SEED)], SAMPLER)[0].original
    assert torch.equal(zero, original)
    assert not torch.allclose(plus, original, atol=1e-3) and not torch.allclose(minus, plus, atol=1e-3)


@pytest.mark.parametrize("options", [
    {"threshold": 1.0}, {"threshold": -0.1}, {"momentum_beta": 1.0}, {"edit_guidance_scale": float("inf")},
    {"warmup_steps": -1}, {"warmup_steps": 5, "cooldown_steps": 5}, {"momentum_scale": -0.1},
    {"concepts": "prompt"},
])
def test_bad_options_are_refused(options) -> None:
    with pytest.raises(ConfigError):
        from_dict(SEGAOptions, options, prefix="options")
