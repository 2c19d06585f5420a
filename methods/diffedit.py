"""DiffEdit (Couairon et al., ICLR 2023, arXiv:2210.11427): a mask from the disagreement of two prompts' noise
predictions, DDIM encoding, and masked decoding with the target prompt.

For a request with source prompt Q (the item's prompt) and target R (its target prompt), on the image x_0 (a
real image's own state `EditRequest.x_0`, else the generated original):
1. mask: x_0 is noised n times to grid step i_m (strength `mask_encode_strength`, fresh noise per map);
   D = mean over the maps and channels of |ε̃(x_t, R) − ε̃(x_t, Q)| (CFG at `mask_guidance_scale`);
   clamped to [0, ρ·mean(D)], divided by ρ·mean(D) and binarised: M = [D / (ρ·mean D) > 0.5];
2. encoding: DDIM inversion of x_0 up to grid step i_r (strength `encode_ratio`), keeping every x_t on the way;
3. decoding from x_{t_{i_r}} with R and CFG; after each step y ← M·y + (1 − M)·x̂, x̂ the encoded state.

Conventions (checked against diffusers' `StableDiffusionDiffEditPipeline`, mask and image, in
tests/methods/test_diffedit.py):
- strengths map to grid steps as diffusers' `get_timesteps` (`strength_start`): i = N − ⌊N·strength⌋;
- the mask is diffusers' `generate_mask` (its `mask_thresholding_ratio` ρ = 3, 10 maps, strength 0.5; the
  paper: "remove extreme values and rescale to [0, 1]", threshold 0.5), but mean(D) is taken per request:
  diffusers averages over the whole batch, which would make a unit's mask depend on its batch-mates;
- background (`background_step`): "same" (default, the paper's Eq.: blend with the encoded state of the level
  just reached, and at the last step with x_0 itself, so the unmasked region is the input exactly);
  "previous" reproduces diffusers' pipeline, which blends with the encoded state one step noisier (the state
  the step started from; its last blend uses x at the first grid timestep, not x_0);
- encoding (`inversion_prompt`, `inversion_guidance`): the paper encodes unconditionally ("none", guidance 1);
  diffusers' example inverts with the source prompt at CFG 7.5 ("source", 7.5). Inversion follows the
  harness's `ddim_invert` (ε at the less noisy state, evaluated at the noisier timestep, as diffusers'
  `DDIMInverseScheduler`);
- decoding is deterministic DDIM (η = 0) whatever the sampler's η: encoding-decoding needs it;
- CFG scales: the run's `guidance_scale` unless set; a scale of 1 is the plain conditional prediction (diffusers
  also skips CFG below 1; the harness treats only exactly 1 as "no CFG").
Request strength s scales the encoding ratio, DiffEdit's inpainting strength (diffusers' `inpaint_strength`, the
paper's r: how far the image is encoded before the masked decoding, so how freely the masked region may change):
the request is encoded and decoded with r(s) = min(1, |s|·r), so strength 1 is the configured `encode_ratio`
exactly. The mask is computed as configured whatever s (`mask_encode_strength` is not scaled). The sign is not used
(a prompt edit has no reverse): −s edits as s. When r(s) re-runs no step (s = 0, or N·r(s) < 1) there is no edit:
the edited image is the unit's original (for a real image, the original the harness pairs it with), and
`edit_states` leaves such a request's state at its input. Requests of one batch with different r(s) are encoded
and decoded in groups of equal start step (the mask is per request anyway), so a request's result does not depend
on its batch-mates. `info` records the mask's share of the image (`mask_fraction`), also for a request not edited.

Options: mask_encode_strength (0.5), n_masks (10), mask_threshold_ratio (ρ, 3.0), encode_ratio (r at strength 1,
0.8; a grid too short for it, ⌊N·r⌋ = 0, is refused naming it, whatever the strengths),
background_step ("same" | "previous", "same"), inversion_prompt ("none" | "source", "none"), inversion_guidance
(1.0), guidance_scale (null = the sampler's), mask_guidance_scale (null = the sampler's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from harness.config import SamplerConfig
from harness.diffusion import (
    Schedule, Trace, ddim_invert, denoise, make_condition, noise_to, predict_eps_parts, strength_start,
)
from harness.diffusion.backbone import Backbone
from harness.errors import ConfigError
from methods._common import (
    edit_prompts, index_groups, pairs, request_noise, request_starts, sample_states, source_states,
)
from methods.base import EditMethod, EditOutput, EditRequest, register_method


@dataclass(frozen=True)
class DiffEditOptions:
    mask_encode_strength: float = 0.5
    n_masks: int = 10
    mask_threshold_ratio: float = 3.0
    encode_ratio: float = 0.8
    background_step: Literal["same", "previous"] = "same"
    inversion_prompt: Literal["none", "source"] = "none"
    inversion_guidance: float = 1.0
    guidance_scale: float | None = None
    mask_guidance_scale: float | None = None

    def validate(self, prefix: str) -> None:
        for name in ("mask_encode_strength", "encode_ratio"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 < value <= 1.0):
                raise ConfigError(f"{prefix}.{name}", value, "a fraction of the grid in (0, 1]")
        if self.n_masks < 1:
            raise ConfigError(f"{prefix}.n_masks", self.n_masks, "an integer >= 1")
        if not (math.isfinite(self.mask_threshold_ratio) and self.mask_threshold_ratio > 0):
            raise ConfigError(f"{prefix}.mask_threshold_ratio", self.mask_threshold_ratio, "a finite number > 0")
        for name in ("inversion_guidance", "guidance_scale", "mask_guidance_scale"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                allowed = "a finite number >= 0" + ("" if name == "inversion_guidance" else " or null")
                raise ConfigError(f"{prefix}.{name}", value, allowed)


def _guided(eps_u: torch.Tensor, eps_c: torch.Tensor, scale: float) -> torch.Tensor:
    return eps_c if scale == 1.0 else eps_u + scale * (eps_c - eps_u)


@torch.no_grad()
def diffedit_mask(backbone: Backbone, schedule: Schedule, x0: torch.Tensor, source: Sequence[str],
                  target: Sequence[str], noise: torch.Tensor, step: int, guidance_scale: float,
                  ratio: float) -> torch.Tensor:
    """Binary mask (B, 1, H, W) of where the target and source prompts' ε̃ disagree, from n noisings per image.

    x0 (B, C, H, W); noise (B, n, C, H, W), the n maps' noise; step: grid index the image is noised to."""
    b, n = noise.shape[:2]
    x_t = noise_to(schedule, step, x0.repeat_interleave(n, dim=0), noise.flatten(0, 1))
    rep = lambda prompts: backbone.encode_text(list(prompts)).repeat_interleave(n, dim=0)  # noqa: E731
    eps_u, eps_src, eps_tgt = predict_eps_parts(backbone, x_t, schedule.timesteps[step],
                                                [rep([""] * b), rep(source), rep(target)])
    diff = (_guided(eps_u, eps_tgt, guidance_scale) - _guided(eps_u, eps_src, guidance_scale)).abs()
    d = diff.reshape(b, n, *diff.shape[1:]).mean(dim=(1, 2))  # (B, H, W)
    clamp = d.mean(dim=(1, 2), keepdim=True) * ratio  # per request (diffusers: over the whole batch)
    scaled = torch.minimum(d.clamp(min=0), clamp) / clamp
    return (scaled > 0.5).to(x0.dtype)[:, None]


@register_method("diffedit")
class DiffEdit(EditMethod):
    families = ("text",)
    Options = DiffEditOptions

    def edit(self, backbone: Backbone, state: dict, requests: Sequence[EditRequest],
             sampler: SamplerConfig) -> list[EditOutput]:
        generated = sample_states(backbone, requests, sampler)
        mask, states = self.edit_states(backbone, requests, source_states(requests, generated), sampler)
        originals = backbone.decode(generated)
        edited = originals.clone()  # a request that re-runs no step is not edited
        run = [k for k, start in enumerate(self.starts(requests, sampler.num_steps)) if start < sampler.num_steps]
        if run:
            rows = torch.tensor(run, device=states.device)
            edited[rows.to(edited.device)] = backbone.decode(states[rows])
        info = [{"mask_fraction": float(m.mean())} for m in mask]
        return pairs(originals, edited, info)

    def starts(self, requests: Sequence[EditRequest], num_steps: int) -> list[int]:
        """Each request's start step: the grid index of its encoding ratio r(s) (num_steps: no step re-run)."""
        opts: DiffEditOptions = self.options
        return request_starts(num_steps, opts.encode_ratio, requests, "encode_ratio")  # refuses a grid too short for r

    def edit_states(self, backbone: Backbone, requests: Sequence[EditRequest], x0: torch.Tensor,
                    sampler: SamplerConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask (B, 1, H, W), edited state x_0) for the images x0 (B, C, H, W); a request whose strength re-runs no
        step keeps its x0."""
        opts: DiffEditOptions = self.options
        n = sampler.num_steps
        mask_step = strength_start(n, opts.mask_encode_strength, "mask_encode_strength")
        starts = self.starts(requests, n)
        schedule = Schedule.from_backbone(backbone, n)
        source, target = [r.item.prompt for r in requests], edit_prompts(requests)
        guidance = sampler.guidance_scale if opts.guidance_scale is None else opts.guidance_scale
        mask_guidance = sampler.guidance_scale if opts.mask_guidance_scale is None else opts.mask_guidance_scale
        noise = request_noise(requests, backbone.state_shape(), "diffedit-mask", n=opts.n_masks, device=backbone.device)
        mask = diffedit_mask(backbone, schedule, x0, source, target, noise, mask_step, mask_guidance,
                             opts.mask_threshold_ratio)
        edited = x0.float().clone()
        for start, rows in index_groups(starts).items():
            if start == n:
                continue
            idx = torch.tensor(rows, device=x0.device)
            edited[idx] = self._encode_decode(backbone, schedule, x0[idx], mask[idx], [source[k] for k in rows],
                                              [target[k] for k in rows], start, guidance)
        return mask, edited

    def _encode_decode(self, backbone: Backbone, schedule: Schedule, x0: torch.Tensor, mask: torch.Tensor,
                       source: list[str], target: list[str], start: int, guidance: float) -> torch.Tensor:
        """Steps 2 and 3 of the module docstring for requests that share the start step `start`."""
        opts: DiffEditOptions = self.options
        n = len(schedule)
        inv_prompts = source if opts.inversion_prompt == "source" else [""] * len(source)
        trace = Trace(record_h=False)
        x_start = ddim_invert(backbone, x0, schedule, make_condition(backbone, inv_prompts, opts.inversion_guidance),
                              trace=trace, start=start)
        # encoded[i]: the encoded state denoising step i starts from (level t_i); encoded[n] = x_0 itself.
        encoded = {i: x for i, x in zip(trace.steps, trace.xs)}
        encoded[n] = x0.float()
        lag = 0 if opts.background_step == "previous" else 1

        def blend(i: int, y: torch.Tensor) -> torch.Tensor:
            return mask * y + (1 - mask) * encoded[i + lag]

        return denoise(backbone, x_start, schedule, make_condition(backbone, target, guidance), start=start,
                       after_step=blend)
