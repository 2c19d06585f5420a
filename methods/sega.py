"""SEGA, semantic guidance (Brack et al., NeurIPS 2023, arXiv:2301.12247), as diffusers'
`SemanticStableDiffusionPipeline` implements it.

At every DDIM step the UNet is called once on [uncond, prompt, concept_1, ..., concept_k], and

    ε̃ = ε_∅ + s_g (ε_p − ε_∅) + γ_t,
    ψ_i = ± s_e (ε_{c_i} − ε_∅)                       (− for a reversed concept),
    ψ̂_i = ψ_i where |ψ_i| ≥ the λ-quantile of |ψ_i| over the spatial positions of its channel, else 0,
    e_t = Σ_i ψ̂_i + s_m ν_t,     ν_{t+1} = β_m ν_t + (1 − β_m) e_t,     ν_0 = 0,
    γ_t = e_t once t is past the warm-up steps, else 0 (the momentum ν builds up during warm-up).

Edit concepts per request (`concepts`): "attribute" = the item's attribute prompts, positive added and negative
reversed (so "a large shape" is pushed towards and "a small shape" away from); "target" = the item's target
prompt alone. The request strength s multiplies the edit scale s_e; s < 0 reverses every concept; s = 0 is no
semantic guidance, i.e. the original sample itself (returned as it is).

Conventions (diffusers' pipeline, tested against it on tiny-sd in tests/methods/test_sega.py):
- the threshold quantile is per sample and per latent channel (`flatten(start_dim=2)`), linear interpolation
  (`torch.quantile`); the paper writes one percentile over the whole latent;
- concepts are weighted 1 each (diffusers overwrites its per-concept weights with `edit_weights`, default 1);
  the paper's Eq. 6 weights are not used; all concepts share one warm-up and one cool-down;
- after the cool-down step a concept contributes 0 but the momentum term s_m ν_t keeps being applied;
- the momentum is updated with e_t, which already contains s_m ν_t (diffusers' order);
- steps are counted on the run's grid (diffusers' default warm-up 10 is for 50 steps); the official
  ml-research code uses the same counting.
Differences from diffusers' pipeline: diffusers skips all guidance when s_g ≤ 1; here s_g = 1 still applies SEGA
on top of the plain conditional ε. Its quantile of float64 guidance is computed in float32; here in the state's
float32. Real images start from their DDIM inversion (the harness's `x_T`; LEDITS++ uses DDPM inversion).

Options: concepts ("attribute" | "target", "attribute"); edit_guidance_scale (s_e >= 0, 5.0); warmup_steps
(int >= 0, 10); cooldown_steps (int >= 1 or null = never, null); threshold (λ in [0, 1), 0.9);
momentum_scale (s_m >= 0, 0.1); momentum_beta (β_m in [0, 1), 0.4). Defaults are diffusers'.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from harness.config import SamplerConfig
from harness.diffusion import Schedule, denoise, predict_eps_parts
from harness.diffusion.backbone import Backbone
from harness.errors import ConfigError
from methods._common import pairs, sample_states, start_noise
from methods.base import EditMethod, EditOutput, EditRequest, PrepareContext, register_method


@dataclass(frozen=True)
class SEGAOptions:
    concepts: Literal["attribute", "target"] = "attribute"
    edit_guidance_scale: float = 5.0
    warmup_steps: int = 10
    cooldown_steps: int | None = None
    threshold: float = 0.9
    momentum_scale: float = 0.1
    momentum_beta: float = 0.4

    def validate(self, prefix: str) -> None:
        if not (math.isfinite(self.edit_guidance_scale) and self.edit_guidance_scale >= 0):
            raise ConfigError(f"{prefix}.edit_guidance_scale", self.edit_guidance_scale, "a finite number >= 0")
        if self.warmup_steps < 0:
            raise ConfigError(f"{prefix}.warmup_steps", self.warmup_steps, "an integer >= 0")
        if self.cooldown_steps is not None and self.cooldown_steps <= self.warmup_steps:
            raise ConfigError(f"{prefix}.cooldown_steps", self.cooldown_steps,
                              f"null or an integer > warmup_steps ({self.warmup_steps}): else no step is guided")
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"{prefix}.threshold", self.threshold, "a quantile in [0, 1)")
        if not (math.isfinite(self.momentum_scale) and self.momentum_scale >= 0):
            raise ConfigError(f"{prefix}.momentum_scale", self.momentum_scale, "a finite number >= 0")
        if not 0.0 <= self.momentum_beta < 1.0:
            raise ConfigError(f"{prefix}.momentum_beta", self.momentum_beta, "a number in [0, 1)")


@dataclass(frozen=True)
class Concept:
    prompt: str
    reverse: bool


class SemanticGuidance:
    """ε̃ of one SEGA step for a batch, with its momentum carried from step to step (one instance per trajectory)."""

    def __init__(self, backbone: Backbone, schedule: Schedule, opts: SEGAOptions, guidance_scale: float,
                 prompt_emb: torch.Tensor, uncond_emb: torch.Tensor, concept_embs: Sequence[torch.Tensor],
                 concept_scales: Sequence[torch.Tensor]) -> None:
        self.backbone, self.schedule, self.opts, self.guidance_scale = backbone, schedule, opts, guidance_scale
        self.embeddings = [uncond_emb, prompt_emb, *concept_embs]
        # Signed s_e per concept and sample, (B, 1, 1, 1): ± |strength| · edit_guidance_scale.
        self.scales = [s.view(-1, 1, 1, 1) for s in concept_scales]
        self.momentum: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, i: int) -> torch.Tensor:
        opts = self.opts
        eps_u, eps_p, *eps_c = predict_eps_parts(self.backbone, x, self.schedule.timesteps[i], self.embeddings)
        guidance = self.guidance_scale * (eps_p - eps_u)
        edit = torch.zeros_like(guidance)
        if opts.cooldown_steps is None or i < opts.cooldown_steps:
            for eps, scale in zip(eps_c, self.scales):
                psi = (eps - eps_u) * scale
                q = torch.quantile(psi.abs().flatten(start_dim=2), opts.threshold, dim=2)
                edit = edit + torch.where(psi.abs() >= q[:, :, None, None], psi, torch.zeros_like(psi))
        if self.momentum is None:
            self.momentum = torch.zeros_like(edit)
        edit = edit + opts.momentum_scale * self.momentum
        self.momentum = opts.momentum_beta * self.momentum + (1 - opts.momentum_beta) * edit
        if i >= opts.warmup_steps:
            guidance = guidance + edit
        return eps_u + guidance


@register_method("sega")
class SEGA(EditMethod):
    families = ("text",)
    Options = SEGAOptions
    needs_prepare = True

    def prepare(self, backbone: Backbone, ctx: PrepareContext) -> dict:
        """The suite's attribute prompts (edit() sees items, not the suite); nothing is learned."""
        return {"attributes": {name: [a.positive, a.negative] for name, a in ctx.suite.attributes.items()}}

    def concepts(self, state: dict, request: EditRequest) -> list[Concept]:
        if self.options.concepts == "target":
            return [Concept(request.item.target_prompt or request.item.prompt, False)]
        positive, negative = state["attributes"][request.item.attribute]
        return [Concept(positive, False), Concept(negative, True)]

    def edit(self, backbone: Backbone, state: dict, requests: Sequence[EditRequest],
             sampler: SamplerConfig) -> list[EditOutput]:
        generated = sample_states(backbone, requests, sampler)
        edited = generated.clone()
        guided = [k for k, r in enumerate(requests) if r.strength != 0]
        if guided:
            edited[guided] = self._guided([requests[k] for k in guided], backbone, state, sampler)
        return pairs(backbone.decode(generated), backbone.decode(edited))

    def _guided(self, requests: list[EditRequest], backbone: Backbone, state: dict,
                sampler: SamplerConfig) -> torch.Tensor:
        concepts = [self.concepts(state, r) for r in requests]
        strengths = torch.tensor([r.strength for r in requests], device=backbone.device)
        concept_embs, concept_scales = [], []
        for k in range(len(concepts[0])):
            concept_embs.append(backbone.encode_text([c[k].prompt for c in concepts]))
            sign = torch.tensor([-1.0 if c[k].reverse else 1.0 for c in concepts], device=backbone.device)
            concept_scales.append(sign * strengths * self.options.edit_guidance_scale)
        schedule = Schedule.from_backbone(backbone, sampler.num_steps)
        guidance = SemanticGuidance(
            backbone, schedule, self.options, sampler.guidance_scale,
            prompt_emb=backbone.encode_text([r.item.prompt for r in requests]),
            uncond_emb=backbone.encode_text([""] * len(requests)), concept_embs=concept_embs,
            concept_scales=concept_scales)
        x_T, noises = start_noise(backbone, requests, sampler)
        return denoise(backbone, x_T, schedule, eta=sampler.eta, noises=noises, predict=guidance)
