"""SDEdit (Meng et al., ICLR 2022, arXiv:2108.01073): noise the image to an intermediate time t₀, denoise it
under the target condition.

For a request: the image x_0 (a real image's own state `EditRequest.x_0`, else the generated original) is
noised with fresh Gaussian noise to grid step i₀, x_{t₀} = sqrt(ᾱ_{t₀}) x_0 + sqrt(1 − ᾱ_{t₀}) ε, and the last
n = ⌊N·t₀⌋ DDIM steps of the run's N-step grid are run from there with the target prompt and CFG.

Conventions (checked against diffusers' `StableDiffusionImg2ImgPipeline` in tests/methods/test_sdedit.py):
- t₀ is diffusers' img2img `strength`: n = min(⌊N·t₀⌋, N) steps are re-run, starting at grid index N − n,
  and the image is noised to that grid step's timestep (with SD's 50-step "leading" grid, t₀ = 0.5 noises to
  t = 481, not 500). The paper's t₀ is continuous with a 1,000-step SDE solver; the official code
  (ermongroup/SDEdit) runs ancestral DDPM steps from t₀·1000. Here the run's sampler is used (DDIM, its η),
  so SDEdit's rows share the sampler of every other row.
- ε is fresh noise drawn from a seed derived from the request's seed (`request_noise`), not x_T: a real
  image's x_T is its inversion, and SDEdit's premise is that the noise is independent of the image.
- Guidance: the run's CFG scale unless `guidance_scale` is set (the paper's models are unconditional or
  class-conditional; CFG with the target prompt is the diffusers / text-editing usage).
- Request strength s scales t₀ (the paper's own realism-faithfulness knob): the request is edited with
  t₀(s) = min(1, |s|·t0), so strength 1 is the configured t0 exactly and a `strengths:` sweep traces the
  paper's trade-off (small s: close to the input; large s: free to follow the target prompt, up to t₀ = 1,
  the whole grid re-run from the noised input). The sign is not used (noising has no reverse direction):
  −s edits as s. When t₀(s) re-runs no step (s = 0, or N·t₀(s) < 1) there is no edit: the edited image is
  the unit's original (for a real image, the original the harness pairs it with), and `info` records
  `sdedit_start_t` null. `info.sdedit_start_t` is otherwise the timestep the request was noised to.
  Requests of one batch with different t₀(s) are run in groups of equal start step, so a request's result
  does not depend on its batch-mates.

Options:
- t0 (float in (0, 1], 0.5): the fraction of the grid that is re-run at strength 1 (the paper's t₀ ∈ [0.3, 0.6]
  for stroke inputs; diffusers' img2img default is 0.8). A grid too short for t0 itself (⌊N·t0⌋ = 0) is
  refused (ValueError naming t0), whatever the strengths.
- guidance_scale (float >= 0 or null, null): CFG scale of the denoising; null = the sampler's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from harness.config import SamplerConfig
from harness.diffusion import Schedule, denoise, make_condition, noise_to
from harness.diffusion.backbone import Backbone
from harness.errors import ConfigError
from methods._common import (
    edit_prompts, index_groups, pairs, request_noise, request_starts, sample_states, source_states, start_noise,
)
from methods.base import EditMethod, EditOutput, EditRequest, register_method


@dataclass(frozen=True)
class SDEditOptions:
    t0: float = 0.5
    guidance_scale: float | None = None

    def validate(self, prefix: str) -> None:
        if not (math.isfinite(self.t0) and 0.0 < self.t0 <= 1.0):
            raise ConfigError(f"{prefix}.t0", self.t0, "a fraction of the grid in (0, 1]")
        if self.guidance_scale is not None and not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ConfigError(f"{prefix}.guidance_scale", self.guidance_scale, "null or a finite number >= 0")


@register_method("sdedit")
class SDEdit(EditMethod):
    families = ("text",)
    Options = SDEditOptions

    def edit(self, backbone: Backbone, state: dict, requests: Sequence[EditRequest],
             sampler: SamplerConfig) -> list[EditOutput]:
        opts: SDEditOptions = self.options
        n = sampler.num_steps
        starts = request_starts(n, opts.t0, requests, "t0")  # refuses a grid too short for the configured t0 first
        schedule = Schedule.from_backbone(backbone, n)
        generated = sample_states(backbone, requests, sampler)
        originals = backbone.decode(generated)
        x0 = source_states(requests, generated)
        eps = request_noise(requests, backbone.state_shape(), "sdedit", device=backbone.device)[:, 0]
        scale = sampler.guidance_scale if opts.guidance_scale is None else opts.guidance_scale
        prompts = edit_prompts(requests)
        _, noises = start_noise(backbone, requests, sampler)  # z_t of the steps re-run when η > 0
        edited = originals.clone()  # a request that re-runs no step is not edited
        for start, rows in index_groups(starts).items():
            if start == n:
                continue
            idx = torch.tensor(rows, device=x0.device)
            cond = make_condition(backbone, [prompts[k] for k in rows], scale)
            x = denoise(backbone, noise_to(schedule, start, x0[idx], eps[idx]), schedule, cond, start=start,
                        eta=sampler.eta, noises=None if noises is None else noises[idx.to(noises.device)])
            edited[idx.to(edited.device)] = backbone.decode(x)
        info = [{"sdedit_start_t": schedule.timesteps[start] if start < n else None} for start in starts]
        return pairs(originals, edited, info)
