"""Image-specific h-space directions from the Jacobian of ε w.r.t. h (Haas et al., FG 2024, Sec. IV-B, SM E).

At every step t of the sample's own trajectory, the top-k right singular vectors of

    J_t = ∂ε_θ(x_t, h_t)/∂h_t  (eq. 6),   or of  ∂(ε_θ ⊙ M)/∂h_t  with a region mask M (eqs. 9-10),

are found by Jacobian subspace iteration (Alg. 1 batched, or Alg. 2 sequential; methods/_subspace.py)
from forward-mode products J v (eq. 8) and reverse-mode products Jᵀ u (eq. 7). x_t and the skip
connections are held fixed: f_t(Δ) = ε_θ(x_t) with the mid-block output shifted to h_t + Δ, which is the
official code's `delta_h = h − h.detach()` (and equals replacing h by h_t + Δ). The x_t are recorded along
the real trajectory, with its fixed variance noise z_t when η > 0 (methods-spec §4 [ASSUMPTION]; the
official code re-samples the path without the sample's z's).

Edit: direction j found at step t* is applied at every step, scaled by that step's singular value
(official `DirectionPlotter.get_direction(global_at_idx=True, apply_svals=True)`, methods-spec §9.18):

    Δh_t = c · strength · scale · σ_{j,t} · v_{j,t*}       (apply_svals=True)
    Δh_t = c · strength · scale · v_{j,t*}                 (apply_svals=False; only step t* is analysed)

(c = ±1, the calibrated sign; +1 for a configured component).

The request strength is γ (README examples: ±50–100 with 10 steps). Directions are computed per
request sample (the paper's image-specific use) or once in `prepare` on a reference seed and transferred
to every sample (Fig. 5); transferred edits use the reference's σ_{j,t} too.

Sign convention: a singular vector's sign is arbitrary, and it decides which way a positive strength
moves. Here each v_{j,t} has its entry of largest magnitude positive (methods/_subspace.fix_signs, after
every iteration), so the direction is a function of J_t alone. The official code iterates on J Jᵀ in ε space
from a Gaussian start (torch.manual_seed(42)) and returns Jᵀu/σ without fixing the sign: its direction is
set by that random start, so the same edit can have the opposite sign there (its plots then align the
steps to step 0, as hspace-pca's align_signs does; with one direction applied at every step that is moot).

Text models (not in the paper): with classifier-free guidance the Jacobian is that of the *guided* ε,
with the same Δ on both CFG halves, exactly as edits are injected (MidBlockHook.delta), i.e.
(1 − w) ∂ε_u/∂h + w ∂ε_c/∂h. A mask given in relative image coordinates is taken on the latent grid
(cells whose centre lies inside the rectangle; methods-spec §9.20 [ASSUMPTION]).

Options:
- k (int, 3): singular vectors per step (official `num_eigvecs`).
- variant ("batched" | "sequential", "batched"): Alg. 1 or Alg. 2; block_size (int, 1): Alg. 2's b.
- convergence (StopCriterion): sigma criterion, tol 1e-5 for 10 consecutive iterations, max 50 (§9.19).
- component ("auto" | int, "auto"): j. An int applies v_j with sign + to every attribute. "auto" calibrates j
  and its sign per attribute in prepare (methods/_calibration.py): each of the k vectors × {+, −} is applied
  to calibration samples (disjoint from the evaluated ones) and scored with `scorer`. With
  `directions_from: reference` every sample gets the reference's vectors, so the sign is one number; with
  `sample` each calibration sample gets its own vectors (as evaluated samples do at edit time), and the
  calibration keeps a reference vector: a request's v_j is applied with sign ⟨v_j, reference⟩.
- scorer (ScorerSpec, {kind: clip}): the calibration's attribute scorer ({kind: oracle} on world suites).
- calibration (CalibrationOptions): n_samples (8), strengths ([1.0], request units before `scale`: set them
  to the run's strengths), max_components (null = all k).
- source_step (int | None, None): t* as a step index, None = num_steps // 2
  [ASSUMPTION: the paper gives no default; README examples use t* in 2..8 of 10 steps].
- apply_svals (bool, True); scale (float, 1.0): multiplies the request strength.
- mask ([x0, y0, x1, y1] | None, None): region of interest in relative coordinates (x right, y down).
- directions_from ("sample" | "reference", "sample"); reference_seed (int | None, None = the
  preparation seed): noise seed of the reference sample; text models get one reference per suite prompt.
- warm_start (bool, False): start step t's iteration from step t−1's vectors (Alg. 1's optional V).
- injection ("plain" | "asyrp", "plain"): how Δh enters the DDIM step (the paper's results use plain).
- strength_scale ("absolute" | "relative", "absolute"), window ([lo, hi], [0, 1]): shared by every h-space
  method (methods/_hspace.py); "relative" makes ‖Δh_t‖ = |strength|·‖h_t‖ along v_{j,t*} (σ and scale drop out).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch

from harness.config import SamplerConfig
from harness.diffusion import MidBlockHook, Schedule, Trace, denoise, initial_noise, make_condition, predict_eps
from harness.diffusion.autodiff import batched_jvp, batched_vjp
from harness.diffusion.backbone import Backbone
from harness.diffusion.sampler import Condition
from harness.errors import ConfigError
from harness.hashing import stable_seed
from methods._calibration import (
    CalibrationOptions, CalibrationTarget, aligned_sign, calibrate, calibration_seeds, group_attributes, manual_info,
    record_info,
)
from methods._common import original_condition, pairs, start_noise
from methods._hspace import HSpaceEditOptions, delta_schedule, prompt_groups, prompt_key
from methods._scorers import ScorerSpec, cached_scorer
from methods._subspace import StopCriterion, subspace_iteration, working_dtype
from methods.base import EditMethod, EditOutput, EditRequest, PrepareContext, register_method


@dataclass(frozen=True)
class JacobianOptions(HSpaceEditOptions):
    k: int = 3
    variant: Literal["batched", "sequential"] = "batched"
    block_size: int = 1
    convergence: StopCriterion = field(default_factory=StopCriterion)
    component: int | Literal["auto"] = "auto"
    scorer: ScorerSpec = field(default_factory=ScorerSpec)
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    source_step: int | None = None
    apply_svals: bool = True
    scale: float = 1.0
    mask: tuple[float, float, float, float] | None = None
    directions_from: Literal["sample", "reference"] = "sample"
    reference_seed: int | None = None
    warm_start: bool = False
    injection: Literal["plain", "asyrp"] = "plain"

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.k < 1:
            raise ConfigError(f"{prefix}.k", self.k, "an integer >= 1")
        if self.component != "auto" and not 0 <= self.component < self.k:
            raise ConfigError(f"{prefix}.component", self.component, f"an integer in [0, k-1 = {self.k - 1}]")
        if self.block_size < 1:
            raise ConfigError(f"{prefix}.block_size", self.block_size, "an integer >= 1")
        if self.source_step is not None and self.source_step < 0:
            raise ConfigError(f"{prefix}.source_step", self.source_step, "a step index >= 0 or null")
        if self.mask is not None:
            if len(self.mask) != 4:
                raise ConfigError(f"{prefix}.mask", list(self.mask), "[x0, y0, x1, y1]")
            x0, y0, x1, y1 = self.mask
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ConfigError(f"{prefix}.mask", list(self.mask), "relative coordinates with 0 <= x0 < x1 <= 1 "
                                  "and 0 <= y0 < y1 <= 1")


# ----------------------------------------------------------------------------------------------
# The function f_t(Δ) = M ⊙ ε_θ(x_t, h_t + Δ) and its Jacobian products

def region_mask(rect: Sequence[float], size: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Binary mask (1, 1, H, W) of the cells whose centre lies in rect = [x0, y0, x1, y1] (relative coords)."""
    x0, y0, x1, y1 = rect
    height, width = size
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    inside = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    if not inside.any():
        raise ValueError(f"mask {list(rect)} covers no cell of the {height}x{width} grid")
    return inside.float().to(device)[None, None]


def select_condition(cond: Condition | None, index: int, n: int = 1) -> Condition | None:
    """Sample `index` of a batched condition, repeated n times."""
    if cond is None:
        return None

    def pick(e: torch.Tensor) -> torch.Tensor:
        return e[index:index + 1].expand(n, *e.shape[1:])

    return Condition(pick(cond.cond), pick(cond.uncond), cond.guidance_scale)


def eps_of_h_shift(backbone: Backbone, x: torch.Tensor, t: int, cond: Condition | None,
                   mask: torch.Tensor | None = None):
    """f(Δ) = M ⊙ ε(x, h + Δ) for a batch of shifts Δ (n, *h); x (1, C, H, W) and cond are one sample's.

    The output has Δ's dtype, so JVP tangents and VJP cotangents match primal and output alike.
    """

    def f(delta: torch.Tensor) -> torch.Tensor:
        n = delta.shape[0]
        with MidBlockHook(backbone.unet) as hook:
            hook.delta = delta
            eps = predict_eps(backbone, x.expand(n, *x.shape[1:]), t, select_condition(cond, 0, n))
        if mask is not None:
            eps = eps * mask
        return eps.to(delta.dtype)

    return f


def jacobian_svd(backbone: Backbone, x: torch.Tensor, t: int, cond: Condition | None, h_shape: Sequence[int],
                 k: int, *, mask: torch.Tensor | None = None, variant: Literal["batched", "sequential"] = "batched",
                 block_size: int = 1,
                 stop: StopCriterion = StopCriterion(), init: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, compute_u: bool = False):
    """Top-k singular triplets of ∂(M ⊙ ε)/∂h at one sample's (x_t, t) by Jacobian subspace iteration."""
    f = eps_of_h_shift(backbone, x, t, cond, mask)
    zero = torch.zeros((1, *h_shape), device=backbone.device, dtype=backbone.dtype)

    def jvp(vs: torch.Tensor) -> torch.Tensor:
        return batched_jvp(f, zero, vs.to(backbone.dtype))

    def vjp(us: torch.Tensor) -> torch.Tensor:
        return batched_vjp(f, zero, us.to(backbone.dtype))

    return subspace_iteration(jvp, vjp, h_shape, k, variant=variant, block_size=block_size, init=init, stop=stop,
                              generator=generator, dtype=working_dtype(backbone.dtype), device=backbone.device,
                              compute_u=compute_u)


# ----------------------------------------------------------------------------------------------
# The method

@register_method("jacobian")
class JacobianSubspace(EditMethod):
    families = ("unconditional", "text")
    Options = JacobianOptions
    needs_prepare = True
    """prepare computes the reference directions (`directions_from: reference`) and the calibration
    (`component: auto`); with neither it returns {}."""

    def _source_step(self, num_steps: int) -> int:
        src = self.options.source_step
        src = num_steps // 2 if src is None else src
        if src >= num_steps:
            raise ValueError(f"source_step {src} is outside the {num_steps}-step grid")
        return src

    def _mask(self, backbone: Backbone) -> torch.Tensor | None:
        if self.options.mask is None:
            return None
        _, height, width = backbone.state_shape()
        return region_mask(self.options.mask, (height, width), backbone.device)

    def directions(self, backbone: Backbone, xs: Sequence[torch.Tensor], schedule: Schedule,
                   cond: Condition | None, seed: int) -> dict[str, Any]:
        """σ_{·,t} at every analysed step and v_{·,t*} for one trajectory (xs[i]: x before step i, (1, C, H, W))."""
        o = self.options
        src = self._source_step(len(schedule))
        steps = range(len(schedule)) if o.apply_svals else [src]
        mask = self._mask(backbone)
        with MidBlockHook(backbone.unet) as hook, torch.no_grad():
            predict_eps(backbone, xs[0], schedule.timesteps[0], cond)
            assert hook.raw is not None  # the UNet call ran its mid_block
            h_shape = tuple(hook.raw.shape[1:])
        sigmas = torch.full((o.k, len(schedule)), float("nan"))
        vector, init, iterations, converged = None, None, 0, True
        for i in steps:
            generator = torch.Generator().manual_seed(stable_seed("jacobian-init", int(seed), i))
            res = jacobian_svd(backbone, xs[i], schedule.timesteps[i], cond, h_shape, o.k, mask=mask,
                               variant=o.variant, block_size=o.block_size, stop=o.convergence,
                               init=init if o.warm_start else None, generator=generator)
            sigmas[:, i] = res.S.float().cpu()
            iterations = max(iterations, res.iterations)
            converged = converged and res.converged
            init = res.V
            if i == src:
                vector = res.V.float().cpu()
        return {"sigmas": sigmas, "vectors": vector, "source_step": src, "iterations": iterations,
                "converged": converged}

    def _trajectory(self, backbone: Backbone, x_T: torch.Tensor, noises: torch.Tensor | None,
                    cond: Condition | None, sampler: SamplerConfig) -> tuple[Schedule, Trace, torch.Tensor]:
        schedule = Schedule.from_backbone(backbone, sampler.num_steps)
        trace = Trace(record_h=False)
        x0 = denoise(backbone, x_T, schedule, cond, eta=sampler.eta, noises=noises, trace=trace)
        return schedule, trace, x0

    def prepare(self, backbone: Backbone, ctx: PrepareContext) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.options.directions_from == "reference":
            seed = self.options.reference_seed if self.options.reference_seed is not None else ctx.seed
            out = {}
            for prompt in prompt_groups(backbone, ctx.suite):
                x_T, noises = initial_noise([seed], backbone.state_shape(), ctx.sampler.num_steps, ctx.sampler.eta,
                                            device=backbone.device)
                cond = make_condition(backbone, [prompt], ctx.sampler.guidance_scale)
                schedule, trace, _ = self._trajectory(backbone, x_T, noises, cond, ctx.sampler)
                out[prompt] = self.directions(backbone, trace.xs, schedule, cond, seed)
            state.update({"directions": out, "reference_seed": seed})
        if self.options.component == "auto":
            state["calibration"] = self._calibrate(backbone, ctx, state)
        return state

    def _calibrate(self, backbone: Backbone, ctx: PrepareContext, state: dict[str, Any]) -> dict[str, Any]:
        """Per prompt group, the calibration record of every attribute (module docstring, `component`)."""
        o = self.options
        scorer = cached_scorer(o.scorer, backbone.device)
        seeds = calibration_seeds(ctx.seed, o.calibration.n_samples, "jacobian")
        out = {}
        for key, items in prompt_groups(backbone, ctx.suite).items():
            requests = [EditRequest(f"calibration-{i}", items[0], 1.0, seed) for i, seed in enumerate(seeds)]
            run = self._run(backbone, state, requests, ctx.sampler)

            def vectors(j: int, run: Any = run) -> torch.Tensor:  # bound now: `run` changes per group
                return torch.stack([d["vectors"][j] for d in run.dirs])

            def render(j: int, strengths: torch.Tensor, run: Any = run) -> torch.Tensor:
                return run.edit([j] * len(seeds), strengths)

            target = CalibrationTarget(run.originals, render, o.calibration.components(o.k),
                                       None if o.directions_from == "reference" else vectors)
            attributes = group_attributes(items)
            out[key] = calibrate(target, {a: ctx.suite.attributes[a] for a in attributes}, scorer, o.calibration)
        return out

    def _run(self, backbone: Backbone, state: dict, requests: Sequence[EditRequest],
             sampler: SamplerConfig) -> "_Run":
        """The requests' unedited trajectories and images and their directions (the reference's, or their own)."""
        x_T, noises = start_noise(backbone, requests, sampler)
        cond = original_condition(backbone, requests, sampler)
        schedule, trace, x0 = self._trajectory(backbone, x_T, noises, cond, sampler)
        if self.options.directions_from == "reference":
            dirs = [state["directions"][prompt_key(backbone, r.item)] for r in requests]
        else:
            # Requests of one sample (a strength sweep) share its directions.
            cache: dict[tuple[int, str], dict[str, Any]] = {}
            dirs = []
            for b, r in enumerate(requests):
                key = (r.seed, prompt_key(backbone, r.item))
                if key not in cache:
                    cache[key] = self.directions(backbone, [x[b:b + 1] for x in trace.xs], schedule,
                                                 select_condition(cond, b), r.seed)
                dirs.append(cache[key])
        return _Run(self, backbone, sampler, x_T, noises, cond, schedule, backbone.decode(x0), dirs)

    def choice(self, state: dict, key: str, attribute: str, directions: dict[str, Any]) -> tuple[int, int, dict]:
        """(j, sign, row info) for a request whose sample has `directions`."""
        o = self.options
        if o.component != "auto":
            return o.component, 1, manual_info(o.component, 1)
        record = state["calibration"][key][attribute]
        j = record["component"]
        sign = aligned_sign(record, directions["vectors"][j])
        return j, sign, record_info(record, sign)

    def edit(self, backbone: Backbone, state: dict, requests: Sequence[EditRequest],
             sampler: SamplerConfig) -> list[EditOutput]:
        o = self.options
        run = self._run(backbone, state, requests, sampler)
        choices = [self.choice(state, prompt_key(backbone, r.item), r.item.attribute, d)
                   for r, d in zip(requests, run.dirs)]
        strengths = torch.tensor([sign * r.strength for r, (_, sign, _) in zip(requests, choices)], dtype=torch.float64)
        edited = run.edit([j for j, _, _ in choices], strengths)
        info = [{**row, "source_step": d["source_step"], "sigma_source": float(d["sigmas"][j, d["source_step"]]),
                 "iterations": d["iterations"], "converged": d["converged"], "directions_from": o.directions_from}
                for (j, _, row), d in zip(choices, run.dirs)]
        return pairs(run.originals, edited, info)


@dataclass
class _Run:
    """A batch's unedited trajectories, images and per-request directions, ready to be edited along any v_j."""

    method: JacobianSubspace
    backbone: Backbone
    sampler: SamplerConfig
    x_T: torch.Tensor
    noises: torch.Tensor | None
    cond: Condition | None
    schedule: Schedule
    originals: torch.Tensor
    dirs: list[dict[str, Any]]

    def edit(self, components: Sequence[int], strengths: torch.Tensor) -> torch.Tensor:
        """Images with Δh_t = strength_b · scale · σ_{j_b,t} · v_{j_b,t*} (request b; a signed strength)."""
        o = self.method.options
        gammas = strengths.tolist()  # the relative scale uses |strength| alone (methods._hspace.delta_schedule)
        strengths = (strengths.to(torch.float64) * o.scale).float()
        vectors = torch.stack([d["vectors"][j] for j, d in zip(components, self.dirs)])   # (B, *h)
        if o.apply_svals:
            svals = torch.stack([d["sigmas"][j] for j, d in zip(components, self.dirs)])  # (B, T)
        else:
            svals = torch.ones((len(self.dirs), len(self.schedule)))
        view = (-1,) + (1,) * (vectors.dim() - 1)
        device = self.backbone.device

        def delta_at(i: int) -> torch.Tensor:
            return ((strengths * svals[:, i]).view(view) * vectors).to(device)

        delta_h, relative = delta_schedule(delta_at, gammas, self.schedule, o)
        x0 = denoise(self.backbone, self.x_T, self.schedule, self.cond, eta=self.sampler.eta, noises=self.noises,
                     delta_h=delta_h, injection=o.injection, relative_delta=relative)
        return self.backbone.decode(x0)
