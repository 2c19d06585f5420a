"""Park et al. (NeurIPS 2023, arXiv:2307.12868) local latent basis from the pullback metric, as the seed-000 baseline.

methods-spec §7 and §9 items 13, 21. With f: x_t ↦ h the encoder half of the UNet (input up to the
mid-block output) and J_x = ∂h/∂x_t, the pullback metric is ‖dx‖² = dxᵀ J_xᵀ J_x dx, and the local basis
is the top right singular vectors v_1..v_n of J_x, found by subspace iteration (methods/_subspace.py,
batched JVP/VJP of x ↦ h; official `local_encoder_pullback_zt`, `pca_rank` = 2 in the editing call).

Edit, for a request of strength s:
1. denoise with the original prompt and the run's CFG to step t_edit (nearest grid step to t_edit·T,
   the official rule `(timesteps − edit_t·1000).abs().argmin()`);
2. compute the basis at (x_{t_edit}, t_edit, c_edit), c_edit = the target prompt's embedding without CFG
   ("weakly supervised" variant with edit prompt = target prompt, A10), as the official `get_h` does;
3. x-space guidance (official `x_space_guidance`), N_g times:
       x ← x + s·λ·[ε(x + δ·v_k, t_edit, c_edit) − ε(x, t_edit, c_edit)]
   (ε conditional on c_edit, no CFG, as in the official code). The request strength multiplies λ
   [ASSUMPTION: the official code sweeps the iterate count instead; scaling λ keeps N_g fixed and makes
   strength 0 the unedited image]. guidance="plain" is the paper's x' = x + s·plain_scale·v_k instead;
4. continue DDIM from t_edit to 0 with `continue_prompt` at `continue_guidance`: by default the empty prompt
   without CFG, the official code's default (`for_prompt = ""`, `guidance_scale = 0`, and its
   `DDIMforwardsteps` applies CFG only when guidance_scale > 1). methods-spec A9 proposed the original prompt
   at the run's CFG for parity; measured on world-text2img (world suite, items circle-large, circle-red,
   circle-square, circle-left, square-blue-bg, 4 seeds each, 20 steps, CFG 5, strength 1, pca_rank 2,
   N_g = 8; scripts/measure_continuation.py), that continuation regenerates the original from the edited
   x_{t_edit}: oracle flip 0/20, preservation 1.00. The empty prompt without CFG keeps part of the edit:
   flip 1/20, preservation 0.75, validity 0.80 (continuing the UNEDITED state that way: flip 0/20,
   preservation 0.91, so the flip is the edit's, and the continuation alone costs ~9% preservation).
   The target prompt at CFG 5: see the measured line in the Options below.
   Strength 0 (x_{t_edit} unchanged) still returns the original image exactly, whatever the continuation.
   On the faces world the empty prompt is off the text model's distribution (faces-text2img saw the empty
   caption in 10% of its 5,500 steps): continuing the UNEDITED x_{t_edit} with it keeps 0.70 of the images
   valid from t_edit 0.7 (preservation 0.62), 0.90 from 0.5, 1.00 from 0.3; the original prompt at guidance 1
   keeps them all (faces_hspace, 5 attributes x 4 seeds, 20 steps, CFG 5). Upper bound there: replacing
   x_{t_edit} by the TARGET prompt's own x_{t_edit} and continuing with the original prompt flips <= 0.10
   from 0.7, 0.5 or 0.3 (the full caption re-renders every factor it names), with the empty prompt 0.80 /
   0.75 / 1.00 (scripts/measure_continuation.py --world faces). Park on faces-text2img, flip / preservation
   (same units): pca_rank 2, t_edit 0.7, empty: 0.10 / 0.54 at strength 1, 0.25 / 0.24 at 4; original @ 1:
   0.00 / 1.00 at 1, 0.20 / 0.64 at 4; pca_rank 6 (more candidates for the calibration), t_edit 0.5,
   original @ 1: 0.05 / 0.85 at 2, 0.35 / 0.85 at 4, 0 / 0 at 8 (invalid); t_edit 0.3, empty: 0.30 / 0.78
   at 3. The faces configs therefore use pca_rank 6, t_edit 0.5, the original prompt at guidance 1,
   strength 4 (on faces-ddpm the same options flip 0.50 at preservation 0.77); the defaults stay the
   official code's. On 16 other seeds (configs/faces_targets.yaml) the same options give 0.19 / 0.80 (text)
   and 0.21 / 0.75 (faces-ddpm) at strength 4: the 4-seed figures above were the lucky end.
Which basis vector k, with which sign. The basis is local: computed per sample at edit time, and its
vectors' signs are a convention (largest entry positive), so "pc0, +" means nothing across samples by itself.
`selection: calibrated` (default) decides in prepare, once per attribute (per item prompt and edit prompt for
text models), on calibration samples disjoint from the evaluated ones (methods/_calibration.py): each
calibration sample gets its own basis at t_edit, every candidate k is applied with both signs, the scorer
scores the results against the suite attribute, and the calibration keeps k and a reference vector in
x-space (the score-weighted sum of the samples' v_k). At edit time the request's own v_k is applied with sign
⟨v_k, reference⟩, so the sign transfers by geometry, not by convention. `selection: per-request` is the
literal A10 reading instead: every candidate is rendered for the request itself and the one the scorer rates
highest against the target prompt is the output (the scorer then sees the evaluated image). Either way the
choice is recorded in EditOutput.info. Unconditional models are supported too (no prompt; Park et al.'s
CelebA setting uses λ = 0.1 and N_g = 16, configure them).

Options:
- pca_rank (int, 2): n, the basis size; convergence (StopCriterion): Park et al.'s rule, stop when
  max |V − V_prev| <= 1e-4 after more than 10 iterations, at most 50.
- t_edit (float, 0.7): edit time as a fraction of T.
- guidance ("x-space" | "plain", "x-space"); delta (float, 1.0): δ; lam (float, 1.0): λ;
  n_guidance (int, 64): N_g; plain_scale (float, 1.0): γ per unit strength for guidance="plain"
  (v_k has unit norm in x-space).
- edit_prompt ("target" | "original", "target"): prompt the basis and the guidance are conditioned on.
- component ("auto" | int, "auto"): fix the basis vector ("auto": chosen); sign ("auto" | "positive" |
  "negative", "auto"): a fixed sign applies to the vector as computed (largest entry positive). With both
  fixed nothing is chosen and no scorer is needed.
- selection ("calibrated" | "per-request", "calibrated"): how "auto" is decided (above).
- calibration (CalibrationOptions): n_samples (8), strengths ([1.0]: set them to the run's strengths),
  max_components (null = all pca_rank); selection "calibrated" only.
- select_strength (float | None, None): selection "per-request" only: strength at which the choice is made;
  None = each request's own strength (the chosen candidate is the output); a number makes the choice the
  same across a strength sweep of one sample, then applies it at the request's strength.
- scorer (ScorerSpec, kind "clip"): the image scorer of the choice (methods/_scorers.py).
- continue_prompt ("original" | "empty" | "target", "empty"), continue_guidance (float | null = the run's
  guidance scale, 1.0): the condition of the steps after t_edit (methods/_common.continuation_condition).
  Measured as in step 4 with the target prompt at CFG 5: flip 17/20, preservation 1.00, but
  the unedited control flips 17/20 as well: there the prompt edits, not the pullback direction.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch

from harness.config import SamplerConfig
from harness.diffusion import Schedule, denoise, predict_eps
from harness.diffusion.autodiff import batched_jvp, batched_vjp
from harness.diffusion.backbone import Backbone
from harness.diffusion.sampler import Condition
from harness.errors import ConfigError
from harness.hashing import stable_seed
from harness.suites import SuiteItem
from methods._calibration import (
    CalibrationOptions, CalibrationTarget, aligned_sign, calibrate, calibration_seeds, group_attributes, manual_info,
    record_info,
)
from methods._common import (
    ContinuePrompt, check_continuation_guidance, continuation_condition, original_condition, pairs, start_noise,
)
from methods._scorers import ScorerSpec, cached_scorer
from methods._subspace import StopCriterion, SubspaceResult, subspace_iteration, working_dtype
from methods.base import EditMethod, EditOutput, EditRequest, PrepareContext, register_method


def _park_convergence() -> StopCriterion:
    return StopCriterion(kind="vectors", tol=1e-4, patience=1, max_iters=50, min_iters=10)


@dataclass(frozen=True)
class ParkOptions:
    pca_rank: int = 2
    convergence: StopCriterion = field(default_factory=_park_convergence)
    t_edit: float = 0.7
    guidance: Literal["x-space", "plain"] = "x-space"
    delta: float = 1.0
    lam: float = 1.0
    n_guidance: int = 64
    plain_scale: float = 1.0
    edit_prompt: Literal["target", "original"] = "target"
    component: int | Literal["auto"] = "auto"
    sign: Literal["auto", "positive", "negative"] = "auto"
    selection: Literal["calibrated", "per-request"] = "calibrated"
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    select_strength: float | None = None
    scorer: ScorerSpec = field(default_factory=ScorerSpec)
    continue_prompt: ContinuePrompt = "empty"
    continue_guidance: float | None = 1.0

    def validate(self, prefix: str) -> None:
        check_continuation_guidance(f"{prefix}.continue_guidance", self.continue_guidance)
        if self.pca_rank < 1:
            raise ConfigError(f"{prefix}.pca_rank", self.pca_rank, "an integer >= 1")
        if not 0.0 <= self.t_edit <= 1.0:
            raise ConfigError(f"{prefix}.t_edit", self.t_edit, "a fraction of T in [0, 1]")
        if self.n_guidance < 0:
            raise ConfigError(f"{prefix}.n_guidance", self.n_guidance, "an integer >= 0")
        if self.component != "auto" and not 0 <= self.component < self.pca_rank:
            raise ConfigError(f"{prefix}.component", self.component,
                              f"\"auto\" or an integer in [0, pca_rank-1 = {self.pca_rank - 1}]")
        if self.select_strength is not None and self.selection != "per-request":
            raise ConfigError(f"{prefix}.select_strength", self.select_strength, "null with selection: calibrated",
                              "set selection: per-request, or calibration.strengths for the calibrated choice")

    @property
    def fixed_sign(self) -> int | None:
        return {"auto": None, "positive": 1, "negative": -1}[self.sign]

    @property
    def chooses(self) -> bool:
        """True when something is left to choose (a component or a sign)."""
        return self.component == "auto" or self.sign == "auto"


# ----------------------------------------------------------------------------------------------
# f: x_t ↦ h and its local basis

class _ReachedH(Exception):
    """Raised by the mid-block hook to skip the decoder half once h is known."""


def encoder_h(backbone: Backbone, t: int, emb: torch.Tensor | None):
    """f(x) = mid-block output of the UNet at (x, t, emb) for a batch x (n, C, H, W); emb (1, L, D) or None.

    The forward pass stops at the mid block (the up path does not influence h), which halves the cost
    of every JVP/VJP.
    """

    def f(x: torch.Tensor) -> torch.Tensor:
        store: dict[str, torch.Tensor] = {}

        def hook(module: Any, inputs: Any, output: torch.Tensor) -> None:
            store["h"] = output
            raise _ReachedH

        handle = backbone.unet.mid_block.register_forward_hook(hook)
        try:
            if emb is None:
                backbone.unet(x, t)
            else:
                backbone.unet(x, t, encoder_hidden_states=emb.expand(x.shape[0], *emb.shape[1:]))
        except _ReachedH:
            pass
        finally:
            handle.remove()
        return store["h"]

    return f


def pullback_basis(backbone: Backbone, x: torch.Tensor, t: int, emb: torch.Tensor | None, rank: int, *,
                   stop: StopCriterion = _park_convergence(), generator: torch.Generator | None = None,
                   compute_u: bool = False) -> SubspaceResult:
    """Top-`rank` right singular vectors (x-space, (rank, C, H, W)) of ∂h/∂x at one sample x (1, C, H, W)."""
    f = encoder_h(backbone, t, emb)
    x = x.to(backbone.dtype)

    def jvp(vs: torch.Tensor) -> torch.Tensor:
        return batched_jvp(f, x, vs.to(backbone.dtype))

    def vjp(us: torch.Tensor) -> torch.Tensor:
        return batched_vjp(f, x, us.to(backbone.dtype))

    return subspace_iteration(jvp, vjp, x.shape[1:], rank, stop=stop, generator=generator,
                              dtype=working_dtype(backbone.dtype), device=backbone.device, compute_u=compute_u)


def x_space_guidance(backbone: Backbone, x: torch.Tensor, v: torch.Tensor, t: int, cond: Condition | None,
                     delta: float, lam: torch.Tensor, steps: int) -> torch.Tensor:
    """x ← x + λ·[ε(x + δv) − ε(x)], `steps` times; x, v (N, C, H, W), λ (N,), cond for N samples (no CFG)."""
    both = None if cond is None else Condition(torch.cat([cond.cond, cond.cond]), torch.cat([cond.uncond, cond.uncond]),
                                               guidance_scale=1.0)
    lam = lam.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    for _ in range(steps):
        eps_plus, eps = predict_eps(backbone, torch.cat([x + delta * v, x]), t, both).chunk(2)
        x = x + lam * (eps_plus - eps)
    return x


# ----------------------------------------------------------------------------------------------
# The method

def group_key(backbone: Backbone, item: SuiteItem, edit_prompt: str) -> str:
    """Calibration group of an item: the basis depends on the item prompt and the edit prompt (text models)."""
    return json.dumps([item.prompt, edit_prompt]) if backbone.family == "text" else ""


@register_method("park")
class ParkPullback(EditMethod):
    families = ("text", "unconditional")
    Options = ParkOptions
    needs_prepare = True
    """The calibration of `selection: calibrated`; otherwise prepare returns {}."""

    def _candidates(self) -> list[tuple[int, int]]:
        o = self.options
        comps = range(o.pca_rank) if o.component == "auto" else [o.component]
        signs = (1, -1) if o.fixed_sign is None else (o.fixed_sign,)
        return [(c, s) for c in comps for s in signs]

    def edit_prompt(self, item: SuiteItem) -> str:
        return (item.target_prompt or item.prompt) if self.options.edit_prompt == "target" else item.prompt

    def prepare(self, backbone: Backbone, ctx: PrepareContext) -> dict[str, Any]:
        o = self.options
        if o.selection != "calibrated" or not o.chooses:
            return {}
        scorer = cached_scorer(o.scorer, backbone.device)
        seeds = calibration_seeds(ctx.seed, o.calibration.n_samples, "park")
        groups: dict[str, list[SuiteItem]] = {}
        for item in ctx.suite.items:
            groups.setdefault(group_key(backbone, item, self.edit_prompt(item)), []).append(item)
        out = {}
        for key, items in groups.items():
            requests = [EditRequest(f"calibration-{i}", items[0], 1.0, seed) for i, seed in enumerate(seeds)]
            batch = self._batch(backbone, requests, ctx.sampler)

            def render(j: int, strengths: torch.Tensor, batch=batch) -> torch.Tensor:
                return batch.render([(b, j, 1, float(st)) for b, st in enumerate(strengths)])

            comps = o.calibration.components(o.pca_rank) if o.component == "auto" else [o.component]
            def vectors(j: int, batch: Any = batch) -> torch.Tensor:  # bound now: `batch` changes per group
                return torch.stack([basis.V[j] for basis in batch.bases])

            target = CalibrationTarget(batch.originals, render, comps, vectors)
            attributes = {a: ctx.suite.attributes[a] for a in group_attributes(items)}
            out[key] = calibrate(target, attributes, scorer, o.calibration, fixed_sign=o.fixed_sign)
        return {"calibration": out}

    def _batch(self, backbone: Backbone, requests: Sequence[EditRequest], sampler: SamplerConfig) -> "_Batch":
        """Denoise the requests to t_edit, finish the originals and compute each sample's local basis."""
        o = self.options
        text = backbone.family == "text"
        schedule = Schedule.from_backbone(backbone, sampler.num_steps)
        i_edit = schedule.step_index(o.t_edit)
        t = schedule.timesteps[i_edit]
        x_T, noises = start_noise(backbone, requests, sampler)
        cond = original_condition(backbone, requests, sampler)
        x_e = denoise(backbone, x_T, schedule, cond, stop=i_edit, eta=sampler.eta, noises=noises)
        x0 = denoise(backbone, x_e, schedule, cond, start=i_edit, eta=sampler.eta, noises=noises)
        cond_c = continuation_condition(backbone, requests, sampler, o.continue_prompt, o.continue_guidance)
        embs = [backbone.encode_text([self.edit_prompt(r.item)]) if text else None for r in requests]

        # Local basis per sample (requests of one sample and prompt share it).
        cache: dict[tuple[int, str, str], SubspaceResult] = {}
        bases = []
        for b, r in enumerate(requests):
            key = (r.seed, r.item.prompt, self.edit_prompt(r.item)) if text else (r.seed, "", "")
            if key not in cache:
                generator = torch.Generator().manual_seed(stable_seed("park-init", int(r.seed)))
                cache[key] = pullback_basis(backbone, x_e[b:b + 1], t, embs[b], o.pca_rank, stop=o.convergence,
                                            generator=generator)
            bases.append(cache[key])
        return _Batch(o, backbone, sampler, schedule, i_edit, t, noises, cond_c, x_e, backbone.decode(x0), embs, bases)

    def edit(self, backbone: Backbone, state: dict, requests: Sequence[EditRequest],
             sampler: SamplerConfig) -> list[EditOutput]:
        batch = self._batch(backbone, requests, sampler)
        if self.options.selection == "per-request" and self.options.chooses:
            edited, rows = self._per_request(backbone, batch, requests)
        else:
            rows = [self.choice(backbone, state, r, batch.bases[b]) for b, r in enumerate(requests)]
            edited = batch.render([(b, row["component"], row["sign"], r.strength)
                                   for b, (r, row) in enumerate(zip(requests, rows))])
        info = []
        for b, row in enumerate(rows):
            c = row["component"]
            info.append({**row, "edit_step": batch.i_edit, "sigma": float(batch.bases[b].S[c]),
                         "iterations": batch.bases[b].iterations, "converged": batch.bases[b].converged})
        return pairs(batch.originals, edited, info)

    def choice(self, backbone: Backbone, state: dict, request: EditRequest, basis: SubspaceResult) -> dict[str, Any]:
        """Row info with the component and sign to apply to this request's own basis."""
        o = self.options
        if not o.chooses:
            return manual_info(o.component, o.fixed_sign)
        key = group_key(backbone, request.item, self.edit_prompt(request.item))
        record = state["calibration"][key][request.item.attribute]
        sign = aligned_sign(record, basis.V[record["component"]])
        return record_info(record, sign)

    def _per_request(self, backbone: Backbone, batch: "_Batch",
                     requests: Sequence[EditRequest]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """The literal A10 reading: render every candidate for the request, keep the scorer's favourite."""
        o = self.options

        def prompt_for_score(r: EditRequest) -> str:
            return r.item.target_prompt or r.item.prompt or r.item.attribute

        candidates = self._candidates()
        chosen: list[tuple[int, int]] = [candidates[0]] * len(requests)
        scores: list[float] = [float("nan")] * len(requests)
        edited: list[torch.Tensor | None] = [None] * len(requests)
        sel = [r.strength if o.select_strength is None else o.select_strength for r in requests]
        rows = [(b, c, s, sel[b]) for b in range(len(requests)) for c, s in candidates]
        images = batch.render(rows)
        scorer = cached_scorer(o.scorer, backbone.device)
        m = len(candidates)
        for b, r in enumerate(requests):
            values = scorer(images[b * m:(b + 1) * m], prompt_for_score(r)).float().cpu()
            best = int(torch.argmax(values))  # ties: the first candidate
            chosen[b], scores[b] = candidates[best], float(values[best])
            if sel[b] == r.strength:
                edited[b] = images[b * m + best]
        todo = [b for b in range(len(requests)) if edited[b] is None]
        if todo:
            images = batch.render([(b, *chosen[b], requests[b].strength) for b in todo])
            for n, b in enumerate(todo):
                edited[b] = images[n]
        info = [{"component": c, "sign": s, "calibrated": False, "score": scores[b]}
                for b, (c, s) in enumerate(chosen)]
        return torch.stack(edited), info


@dataclass
class _Batch:
    """Requests denoised to t_edit, their finished originals and local bases, ready to be edited along any ±v_k."""

    options: ParkOptions
    backbone: Backbone
    sampler: SamplerConfig
    schedule: Schedule
    i_edit: int
    t: int
    noises: torch.Tensor | None
    cond: Condition | None
    """The condition of the steps after t_edit (continue_prompt at continue_guidance)."""
    x_e: torch.Tensor
    originals: torch.Tensor
    embs: list[torch.Tensor | None]
    bases: list[SubspaceResult]

    def render(self, rows: Sequence[tuple[int, int, int, float]]) -> torch.Tensor:
        """Images for rows (request b, component c, sign s, strength)."""
        o, backbone = self.options, self.backbone
        if not rows:
            return self.originals[:0]
        text = backbone.family == "text"
        idx = [b for b, _, _, _ in rows]
        x = self.x_e[idx]
        v = torch.stack([s * self.bases[b].V[c] for b, c, s, _ in rows]).to(x.device, x.dtype)
        strength = torch.tensor([st for _, _, _, st in rows], dtype=x.dtype)
        if o.guidance == "plain":
            x_new = x + (strength * o.plain_scale).to(x.device).view(-1, 1, 1, 1) * v
        else:
            x_new = x.clone()
            active = [n for n in range(len(rows)) if strength[n] != 0]  # strength 0 leaves x as it is
            if active:
                emb = torch.cat([self.embs[idx[n]] for n in active]) if text else None
                c_edit = Condition(emb, emb, 1.0) if text else None
                x_new[active] = x_space_guidance(backbone, x[active], v[active], self.t, c_edit, o.delta,
                                                 strength[active] * o.lam, o.n_guidance)
        images = self.originals[idx].clone()
        changed = [n for n in range(len(rows)) if not torch.equal(x_new[n], x[n])]
        if changed:  # an unchanged x_{t_edit} continues exactly as the original did
            cond = self.cond
            rows_cond = None if cond is None else Condition(cond.cond[[idx[n] for n in changed]],
                                                            cond.uncond[[idx[n] for n in changed]],
                                                            cond.guidance_scale)
            z = None if self.noises is None else self.noises[[idx[n] for n in changed]]
            out = denoise(backbone, x_new[changed], self.schedule, rows_cond, start=self.i_edit, eta=self.sampler.eta,
                          noises=z)
            images[changed] = backbone.decode(out)
        return images
