"""h-space PCA (Haas et al., FG 2024, Sec. IV-A; methods-spec §3, §9 items 16–17).

prepare: draw N fresh samples with the run's sampler (the paper uses η = 1; η > 0 uses each sample's fixed
z_{T:1}; text models use the item's prompt with CFG and record h of the conditional half), record h_t at
every step and fit one PCA per step. The PCA is incremental (`_hspace.TimestepIPCA`: sklearn
IncrementalPCA's update in torch, the official code's choice), so N is bounded by time, not memory: it
keeps a mean and a rank-`sketch_rank` sketch per step, never a d×d covariance (d = 32768 for the
CelebA-HQ DDPM). Each PC's sign is fixed at the first step (largest entry positive) and then aligned
across steps: u_{j,t} is flipped where ⟨u_{j,0}, u_{j,t}⟩ < 0 (spec §3 step 3). Text models get one PCA
per distinct item prompt.

edit: Δh_t = γ · c · σ_{j,t} · u_{j,t} at every step (γ = the request's strength; j and the sign c from the
calibration, or the configured PC with c = +1), with σ = s/sqrt(N−1)
(the per-step standard deviation along the PC; "std") or the raw singular value s ("singular_values",
the incremental_pca.py path, sqrt(N−1) times larger). The random-direction control (Fig. 4b) replaces
u_{j,t} by a random unit direction per step, so ‖Δh_t‖ is the same as the PC edit's.

Options:
- n_samples (int, 500): N, the samples the PCA is fitted on (README demo 500; incremental_pca.py 50000).
- n_components (int, 10): PCs kept per step.
- component ("auto" | int, "auto"): PC index j used for every item. "auto" calibrates j and its sign per
  attribute in prepare (methods/_calibration.py: every kept PC × {+, −} scored with `scorer` on calibration
  samples disjoint from the evaluated ones); an int applies PC j with sign + to every attribute.
- components (dict attribute -> int, {}): a fixed PC (sign +) for these attributes, whatever `component` says.
- scorer (ScorerSpec, {kind: clip}): the attribute scorer of the calibration ({kind: oracle} on world suites).
- calibration (CalibrationOptions): n_samples (8), strengths ([1.0]: set them to the run's strengths),
  max_components (null = all n_components).
- normalisation ("std" | "singular_values", "std"): σ_{j,t} = s/sqrt(N−1), or s (spec §9.17).
- random_control (bool, false): edit along random directions instead, with the PC's per-step norm
  (one Gaussian direction per step, drawn once in prepare from the preparation seed).
- injection ("plain" | "asyrp", "plain"): how Δh enters the DDIM step (the paper uses plain).
- strength_scale ("absolute" | "relative", "absolute"), window ([lo, hi], [0, 1]): shared by every h-space
  method (methods/_hspace.py): γ in the method's units or as a fraction of ‖h_t‖; the steps that get Δh.
- batch_size (int, 16): samples denoised together while recording h.
- fit_batch_size (int, 100): rows gathered before each incremental-PCA update (official code: 1000).
- sketch_rank (int or null, null = exact): rank kept between incremental updates. null keeps n_samples
  rows, so the PCA is exact (equal to the SVD of all centred samples; the data's rank is at most N), at a
  memory cost of T·min(N, d)·d float64 values (CelebA-HQ DDPM, N = 500, 50 steps: 6.5 GB; pass an int
  to bound it). An int r < N is sklearn IncrementalPCA's approximation with r rows kept: the official
  code's incremental_pca.py uses r = n_components = 25 (50,000 samples, batches of 1,000); its pca.py
  (the README demo, 500 samples) is exact (an SVD via the kernel matrix of all samples), which the
  default matches. Measured against the exact PCA on a flat spectrum (N = 500, d = 2048, 64 directions
  with σ from 1.0 to 0.8 plus isotropic noise, batches of 100, top 10 PCs): r = 10 (= n_components):
  σ up to 7.2% off, min |cos| 0.06; r = 20: 3.9%, 0.16; r = 40: 0.9%, 0.97; r = 80 (above the data's
  64 signal directions): exact. A sketch is only safe well above the spectrum's effective rank.

Sign conventions (the edit direction's sign decides which way a positive strength moves): each step's PCs
have their largest-magnitude entry positive (sklearn's svd_flip, as the official incremental_pca.py; its
exact pca.py makes the first entry positive instead, so the same PC may point the other way there), then
u_{j,t} is flipped where ⟨u_{j,0}, u_{j,t}⟩ < 0 (the official make_sure_vecs_point_in_same_direction).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch

from harness.config import SamplerConfig
from harness.diffusion import h_shape
from harness.diffusion.backbone import Backbone
from harness.errors import ConfigError
from methods.base import EditMethod, EditOutput, EditRequest, PrepareContext, register_method
from methods._calibration import (
    CalibrationOptions, CalibrationTarget, aligned_sign, calibrate, calibration_seeds, group_attributes, manual_info,
    record_info,
)
from methods._common import generate
from methods._hspace import (
    HSpaceEditOptions, TimestepIPCA, align_signs, edit_with_deltas, prompt_groups, prompt_key, record_batches,
    require_attributes, sample_seeds,
)
from methods._scorers import ScorerSpec, cached_scorer


@dataclass(frozen=True)
class HSpacePCAOptions(HSpaceEditOptions):
    n_samples: int = 500
    n_components: int = 10
    component: int | Literal["auto"] = "auto"
    components: dict[str, int] = field(default_factory=dict)
    scorer: ScorerSpec = field(default_factory=ScorerSpec)
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    normalisation: Literal["std", "singular_values"] = "std"
    random_control: bool = False
    injection: Literal["plain", "asyrp"] = "plain"
    batch_size: int = 16
    fit_batch_size: int = 100
    sketch_rank: int | None = None

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        for name in ("n_samples", "n_components", "batch_size", "fit_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name}", getattr(self, name), "an integer >= 1")
        if self.n_samples < 2:
            raise ConfigError(f"{prefix}.n_samples", self.n_samples, "an integer >= 2", "PCA needs 2 samples")
        fixed = [("component", self.component)] if self.component != "auto" else []
        for key, j in fixed + [(f"components.{a}", j) for a, j in self.components.items()]:
            if not 0 <= j < self.n_components:
                raise ConfigError(f"{prefix}.{key}", j, f"an integer in [0, {self.n_components - 1}]",
                                  "raise n_components to use a later PC")
        if self.sketch_rank is not None and self.sketch_rank < self.n_components:
            raise ConfigError(f"{prefix}.sketch_rank", self.sketch_rank, "null or an integer >= n_components")


def fit_pca(backbone: Backbone, seeds: Sequence[int], sampler: SamplerConfig, prompt: str,
            opts: HSpacePCAOptions) -> TimestepIPCA:
    """Stream the samples' h_{T:1} into one incremental PCA per step."""
    # Default: keep every sample's row, so the incremental PCA is exact (see the sketch_rank option).
    ipca = TimestepIPCA(opts.sketch_rank or opts.n_samples)
    buffer: list[torch.Tensor] = []
    rows = 0
    for _, hs, _ in record_batches(backbone, seeds, sampler, prompt, opts.batch_size):
        assert hs is not None  # record_batches records h unless told not to
        buffer.append(hs.flatten(2).transpose(0, 1))  # (T, B, d)
        rows += hs.shape[0]
        if rows >= opts.fit_batch_size:
            ipca.partial_fit(torch.cat(buffer, dim=1))
            buffer, rows = [], 0
    if buffer:
        ipca.partial_fit(torch.cat(buffer, dim=1))
    return ipca


def pca_state(ipca: TimestepIPCA, shape: tuple[int, ...], n_components: int) -> dict:
    """Sign-aligned unit PCs (k, T, *h) and their singular values (k, T) from a fitted IPCA."""
    if ipca.components is None or ipca.singular_values is None:
        raise ValueError("the incremental PCA has seen no samples")
    k = min(n_components, ipca.components.shape[1])
    u = align_signs(ipca.components[:, :k].transpose(0, 1))  # (k, T, d)
    return {
        "components": u.reshape(k, u.shape[1], *shape).float().cpu(),
        "singular_values": ipca.singular_values[:, :k].T.contiguous().cpu(),
        "n_samples": ipca.n_seen,
    }


def step_scales(group: dict, j: int, normalisation: str) -> torch.Tensor:
    """σ_{j,t} for every step: s/sqrt(N−1) ("std") or s ("singular_values"), shape (T,)."""
    s = group["singular_values"][j]
    return s / (group["n_samples"] - 1) ** 0.5 if normalisation == "std" else s


def step_delta(group: dict, j: int, unit: torch.Tensor, strength: float, normalisation: str) -> torch.Tensor:
    """Δh_{T:1} = strength · σ_{j,t} · unit_t, (T, *h); unit is PC j (or the random control's direction)."""
    sigma = step_scales(group, j, normalisation)
    return (strength * sigma).float().view(-1, *([1] * (unit.dim() - 1))) * unit


@register_method("hspace-pca")
class HSpacePCA(EditMethod):
    Options = HSpacePCAOptions
    needs_prepare = True

    def prepare(self, backbone: Backbone, ctx: PrepareContext) -> dict:
        opts = self.options
        require_attributes(ctx.suite, opts.components, "options.components")
        shape = h_shape(backbone)
        seeds = sample_seeds(ctx.seed, opts.n_samples, "hspace-pca")
        groups = {key: pca_state(fit_pca(backbone, seeds, ctx.sampler, key, opts), shape, opts.n_components)
                  for key in prompt_groups(backbone, ctx.suite)}
        state: dict[str, Any] = {"groups": groups, "num_steps": ctx.sampler.num_steps}
        if opts.component == "auto":
            state["calibration"] = self._calibrate(backbone, ctx, groups)
        if opts.random_control:
            g = torch.Generator().manual_seed(ctx.seed)
            r = torch.randn((ctx.sampler.num_steps, *shape), generator=g, dtype=torch.float64)
            r = r / r.flatten(1).norm(dim=1).view(-1, *([1] * len(shape)))
            state["random"] = r.float()
        return state

    def _calibrate(self, backbone: Backbone, ctx: PrepareContext, groups: dict) -> dict:
        """Per prompt group, the calibration record of every attribute `component: auto` applies to.

        The PCs are shared by every sample, so a render is one generate call with Δh = strength_i · σ_j · u_j;
        with `random_control` the PCs are calibrated all the same and the control then borrows the chosen
        PC's norm and sign.
        """
        opts = self.options
        scorer = cached_scorer(opts.scorer, backbone.device)
        seeds = calibration_seeds(ctx.seed, opts.calibration.n_samples, "hspace-pca")
        out = {}
        for key, items in prompt_groups(backbone, ctx.suite).items():
            attributes = [a for a in group_attributes(items) if a not in opts.components]
            if not attributes:
                continue
            group = groups[key]
            requests = [EditRequest(f"calibration-{i}", items[0], 1.0, seed) for i, seed in enumerate(seeds)]

            def render(j: int, strengths: torch.Tensor, group=group, requests=requests) -> torch.Tensor:
                d = torch.stack([step_delta(group, j, group["components"][j], float(s), opts.normalisation)
                                 for s in strengths]).to(backbone.device)
                return generate(backbone, requests, ctx.sampler, delta_h=lambda step: d[:, step], injection=opts.injection)

            target = CalibrationTarget(generate(backbone, requests, ctx.sampler), render,
                                       opts.calibration.components(group["components"].shape[0]))
            out[key] = calibrate(target, {a: ctx.suite.attributes[a] for a in attributes}, scorer, opts.calibration)
        return out

    def choice(self, state: dict, key: str, attribute: str) -> tuple[int, int, dict[str, Any]]:
        """(PC index, sign, row info) of an attribute: the fixed PC with sign +, or the calibrated choice."""
        opts = self.options
        if attribute in opts.components:
            return opts.components[attribute], 1, manual_info(opts.components[attribute], 1)
        if opts.component != "auto":
            return opts.component, 1, manual_info(opts.component, 1)
        record = state["calibration"][key][attribute]
        sign = aligned_sign(record)
        return record["component"], sign, record_info(record, sign)

    def deltas(self, state: dict, requests: Sequence[EditRequest], backbone: Backbone) -> tuple[torch.Tensor, list]:
        """Δh_{T:1} of each request (B, T, *h), strength and sign included, and the rows' diagnostics."""
        opts = self.options
        out, info = [], []
        for r in requests:
            key = prompt_key(backbone, r.item)
            group = state["groups"][key]
            j, sign, row = self.choice(state, key, r.item.attribute)
            if j >= group["components"].shape[0]:
                raise ValueError(f"component {j} requested but only {group['components'].shape[0]} PCs exist "
                                 f"(n_samples={group['n_samples']})")
            unit = state["random"] if opts.random_control else group["components"][j]
            d = step_delta(group, j, unit, sign * r.strength, opts.normalisation)
            out.append(d)
            info.append({**row, "random_control": opts.random_control,
                         "mean_step_norm": float(d.flatten(1).norm(dim=1).mean())})
        return torch.stack(out), info

    def edit(self, backbone: Backbone, state: dict, requests: Sequence[EditRequest],
             sampler: SamplerConfig) -> list[EditOutput]:
        deltas, info = self.deltas(state, requests, backbone)
        return edit_with_deltas(backbone, requests, sampler, deltas, self.options.injection, info, spec=self.options)
