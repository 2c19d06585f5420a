"""h-space pieces the Haas et al. (FG 2024) methods share: trajectories of h, streaming PCA, projections.

- `prompt_key`, `prompt_groups`, `require_attributes`: which prompt a direction belongs to (text models learn
  one per item prompt), and the check that attributes named in options exist in the suite.
- `sample_seeds`, `record_batches`: draw N fresh samples in batches with the run's sampler (fixed z's for
  η > 0, the item's prompt and CFG for text models) and record h_{T:1} (the conditional half) with the
  shared `denoise` + `Trace`; optionally decode the images too.
- `TimestepIPCA`: one incremental PCA per timestep, fed batch by batch (sklearn IncrementalPCA's update,
  Ross et al. 2008, written in torch): the state is the running mean, the sample count and a rank-r
  sketch diag(s)·Vᵀ of the centred data, so memory is O(T·r·d) whatever N is. Each update takes the thin
  SVD of [diag(s)Vᵀ; X_b − mean_b; sqrt(n·b/(n+b))·(mean − mean_b)]. With r ≥ N (or data of rank ≤ r)
  nothing is ever truncated and the result equals the full SVD of the centred stacked matrix.
- `align_signs`: Haas et al.'s sign alignment across timesteps (flip u_{j,t} if ⟨u_{j,0}, u_{j,t}⟩ < 0).
- `flatten_trajectory`, `project_out`: inner products over the whole flattened h_{T:1} and eq. (12)
  solved through the normal equations (the projector is never formed).
- `HSpaceEditOptions`, `steps_in_window`, `delta_schedule`: how every h-space method turns a strength into
  Δh_t (written once here, inherited by the methods' options): the strength scale and the timestep window.
- `edit_with_deltas`: the unedited and the edited image of each request, Δh_t given per request and step.

Strength scale (`strength_scale`):
- "absolute" (default): Δh_t is the method's own, strength included (γ·σ_{j,t}·u_{j,t} for hspace-pca,
  γ·scale·σ_{j,t}·v_{j,t*} for jacobian, γ·v_t for supervised, γ·scale·v for random-direction). These are
  the papers' units, so the published strengths (Haas et al.'s README: PCA γ in ±5 std units, Jacobian
  γ = ±50-100) mean what they meant there; that is why it is the default (methods-spec: where code and
  paper leave a choice, default to the paper). Its drawback is that one γ means very different shifts
  per method: on world-ddpm's mid-block ‖h_t‖ is 230-280 while the Jacobian's σ at t* is 0.045-0.06
  (issue 15's measurement), so γ = 100 moves h by ~2%, and random-direction's scale 20 is ~8% of ‖h‖.
- "relative": ‖Δh_t‖ = |γ|·‖h_t‖ for every method, where ‖h_t‖ is the sample's own mid-block norm at that
  step (measured in the forward pass by MidBlockHook, conditional half under CFG). The method only
  chooses the direction (its Δh_t normalised per sample and step; the sign of γ kept); its own per-step
  magnitudes (σ_{j,t}, scale, normalisation) no longer matter. γ = 0.1 is a 10% shift of h for every
  method, the common scale a cross-method sweep needs.
Window (`window: [lo, hi]`, fractions of T, default [0, 1] = every step as in the papers): Δh_t is added
only at grid steps whose timestep t satisfies lo·T <= t <= hi·T (e.g. [0.5, 1] = the noisier half,
where layout and colour are decided); the other steps run unedited.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, Sequence

import torch

from harness.config import SamplerConfig
from harness.diffusion import Schedule, Trace, denoise, initial_noise, make_condition
from harness.diffusion.backbone import Backbone
from harness.diffusion.sampler import DeltaH
from harness.errors import ConfigError
from harness.hashing import stable_seed
from harness.suites import Suite, SuiteItem
from methods.base import EditOutput, EditRequest
from methods._common import generate, pairs


# -- which prompt a direction belongs to --------------------------------------------------------

def prompt_key(backbone: Backbone, item: SuiteItem) -> str:
    """Directions of text models are learned per prompt (h depends on it); unconditional ones share one."""
    return item.prompt if backbone.family == "text" else ""


def prompt_groups(backbone: Backbone, suite: Suite) -> dict[str, list[SuiteItem]]:
    """The suite's items grouped by `prompt_key`, in first-seen order."""
    groups: dict[str, list[SuiteItem]] = {}
    for item in suite.items:
        groups.setdefault(prompt_key(backbone, item), []).append(item)
    return groups


def require_attributes(suite: Suite, names: Iterable[str], key: str) -> None:
    """Refuse option-named attributes the suite does not declare (ConfigError naming `key`, e.g. options.components)."""
    for name in names:
        if name not in suite.attributes:
            raise ConfigError(key, name, sorted(suite.attributes), f"no such attribute in suite {suite.name!r}")


# -- recording h_{T:1} ---------------------------------------------------------------------------

def sample_seeds(seed: int, n: int, tag: str) -> list[int]:
    """n noise seeds for a preparation pass, from stable hashes (never from a global RNG stream)."""
    return [stable_seed(tag, seed, i) for i in range(n)]


def record_batches(backbone: Backbone, seeds: Sequence[int], sampler: SamplerConfig, prompt: str = "",
                   batch_size: int = 16, decode: bool = False, record_h: bool = True
                   ) -> Iterator[tuple[slice, torch.Tensor | None, torch.Tensor | None]]:
    """Yield (positions in `seeds`, h (B, T, *h) float32 or None, images (B, 3, H, W) or None) per batch.

    Each sample starts from its own seed's x_T and z_{T:1} (`initial_noise`), whatever batch it is in (the
    trajectory itself may differ across batchings by kernel rounding). h is the unshifted mid-block output
    of the conditional half.
    """
    schedule = Schedule.from_backbone(backbone, sampler.num_steps)
    for start in range(0, len(seeds), batch_size):
        chunk = list(seeds[start:start + batch_size])
        x_T, noises = initial_noise(chunk, backbone.state_shape(), sampler.num_steps, sampler.eta,
                                    device=backbone.device)
        cond = make_condition(backbone, [prompt] * len(chunk), sampler.guidance_scale)
        trace = Trace(record_x=False, record_h=record_h)
        x0 = denoise(backbone, x_T, schedule, cond, eta=sampler.eta, noises=noises, trace=trace)
        hs = torch.stack(trace.hs, dim=1) if record_h else None
        images = backbone.decode(x0) if decode else None
        yield slice(start, start + len(chunk)), hs, images


def record_real(backbone: Backbone, images: torch.Tensor, sampler: SamplerConfig, prompt: str = "",
                batch_size: int = 16) -> torch.Tensor:
    """h_{T:1} (N, T, *h) of real images: DDIM-invert each (η = 0, caption at guidance 1), then denoise
    from the inverted x_T with η = 0 and the run's guidance, recording h (Haas et al. SM F)."""
    from harness.diffusion import ddim_invert

    schedule = Schedule.from_backbone(backbone, sampler.num_steps)
    out = []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start:start + batch_size].to(backbone.device)
        plain = make_condition(backbone, [prompt] * len(chunk), 1.0)
        x_T = ddim_invert(backbone, backbone.encode(chunk), schedule, plain)
        trace = Trace(record_x=False)
        denoise(backbone, x_T, schedule, make_condition(backbone, [prompt] * len(chunk), sampler.guidance_scale),
                trace=trace)
        out.append(torch.stack(trace.hs, dim=1))
    return torch.cat(out)


# -- incremental PCA per timestep -------------------------------------------------------------------

def _flip_signs(vt: torch.Tensor) -> torch.Tensor:
    """Deterministic sign of each row: its largest-magnitude entry is positive (sklearn's svd_flip)."""
    idx = vt.abs().argmax(dim=-1, keepdim=True)
    signs = torch.sign(vt.gather(-1, idx))
    signs[signs == 0] = 1
    return vt * signs


class TimestepIPCA:
    """Incremental PCA of T separate d-dimensional data sets, updated with batches X of shape (T, b, d).

    sketch_rank: rows of diag(s)Vᵀ kept between updates (sklearn keeps n_components). Exact (equal to
    the full SVD of the centred data) as long as the data seen so far has rank ≤ sketch_rank.
    """

    def __init__(self, sketch_rank: int, dtype: torch.dtype = torch.float64) -> None:
        if sketch_rank < 1:
            raise ValueError(f"sketch_rank must be >= 1, got {sketch_rank}")
        self.sketch_rank = sketch_rank
        self.dtype = dtype
        self.n_seen = 0
        self.mean: torch.Tensor | None = None        # (T, d)
        self.components: torch.Tensor | None = None  # (T, r, d), rows orthonormal
        self.singular_values: torch.Tensor | None = None  # (T, r), descending

    def partial_fit(self, x: torch.Tensor) -> "TimestepIPCA":
        x = x.to(self.dtype)
        if x.dim() != 3 or x.shape[1] == 0:
            raise ValueError(f"expected a batch of shape (T, b>0, d), got {tuple(x.shape)}")
        b = x.shape[1]
        batch_mean = x.mean(dim=1)
        centred = x - batch_mean[:, None]
        if self.n_seen == 0:
            stacked, new_mean = centred, batch_mean
        else:
            n = self.n_seen
            new_mean = self.mean + (batch_mean - self.mean) * (b / (n + b))
            correction = ((n * b / (n + b)) ** 0.5 * (self.mean - batch_mean))[:, None]
            assert self.singular_values is not None and self.components is not None  # set by the first batch
            sketch = self.singular_values[..., None] * self.components
            stacked = torch.cat([sketch, centred, correction], dim=1)
        comps, svals = [], []
        for t in range(stacked.shape[0]):  # one thin SVD per timestep keeps the memory at one (rows, d) matrix
            _, s, vt = torch.linalg.svd(stacked[t], full_matrices=False)
            r = min(self.sketch_rank, s.shape[0])
            comps.append(_flip_signs(vt[:r]))
            svals.append(s[:r])
        self.components, self.singular_values = torch.stack(comps), torch.stack(svals)
        self.mean, self.n_seen = new_mean, self.n_seen + b
        return self


def align_signs(u: torch.Tensor) -> torch.Tensor:
    """u: (k, T, ...) unit vectors per component and step. Flip u_{j,t} where ⟨u_{j,0}, u_{j,t}⟩ < 0."""
    flat = u.reshape(u.shape[0], u.shape[1], -1)
    ip = (flat[:, :1] * flat).sum(dim=-1)
    signs = torch.where(ip < 0, -1.0, 1.0).to(u.dtype)
    return u * signs.view(*signs.shape, *([1] * (u.dim() - 2)))


# -- whole-trajectory geometry ---------------------------------------------------------------------

def flatten_trajectory(v: torch.Tensor) -> torch.Tensor:
    """(T, *h) -> (T·d,): the vector whose inner products eq. (12) uses (all timesteps jointly)."""
    return v.reshape(-1)


def project_out(v0: torch.Tensor, removed: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. (12): v = [I − V(VᵀV)⁻¹Vᵀ] v0 over the flattened trajectories, not renormalised.

    Solves the normal equations (VᵀV) c = Vᵀv0 in float64 and returns v0 − V c in v0's shape and dtype.
    A least-squares solve keeps it defined when some removed directions are linearly dependent.
    """
    if not removed:
        return v0.clone()
    a = flatten_trajectory(v0).double().cpu()
    vmat = torch.stack([flatten_trajectory(v).double().cpu() for v in removed], dim=1)  # (D, k)
    gram = vmat.T @ vmat
    coef = torch.linalg.lstsq(gram, (vmat.T @ a)[:, None], driver="gelsd").solution[:, 0]
    out = a - vmat @ coef
    return out.reshape(v0.shape).to(device=v0.device, dtype=v0.dtype)


# -- strength scale and timestep window, shared by every h-space method ------------------------------

@dataclass(frozen=True)
class HSpaceEditOptions:
    """The options every h-space method inherits (see the module docstring): strength scale and window."""

    strength_scale: Literal["absolute", "relative"] = "absolute"
    window: tuple[float, float] = (0.0, 1.0)

    def validate(self, prefix: str) -> None:
        lo, hi = self.window
        if not (0.0 <= lo <= hi <= 1.0 and math.isfinite(lo) and math.isfinite(hi)):
            raise ConfigError(f"{prefix}.window", list(self.window), "[lo, hi] with 0 <= lo <= hi <= 1",
                              "fractions of T, e.g. [0.5, 1.0] for the noisier half of the steps")


def steps_in_window(schedule: Schedule, window: tuple[float, float]) -> list[bool]:
    """Per grid step: does its timestep t lie in [lo·T, hi·T]?"""
    lo, hi = window
    big_t = schedule.num_train_timesteps
    return [lo * big_t <= t <= hi * big_t for t in schedule.timesteps]


def delta_schedule(delta_at: Callable[[int], torch.Tensor], strengths: Sequence[float], schedule: Schedule,
                   spec: HSpaceEditOptions) -> tuple[DeltaH, bool]:
    """(delta_h for `denoise`, its relative_delta flag) from the method's absolute Δh_t.

    delta_at(i): the method's Δh at step i, (B, *h) with each request's strength already applied.
    Relative: each sample's Δh_t is normalised and multiplied by |γ| (MidBlockHook then multiplies by ‖h_t‖);
    a zero Δh (γ = 0) stays exactly zero, so strength 0 still gives the unedited image byte for byte.
    Steps outside the window get no Δh at all.
    """
    inside = steps_in_window(schedule, spec.window)
    relative = spec.strength_scale == "relative"
    mags = torch.tensor([abs(float(s)) for s in strengths])

    def delta_h(i: int) -> torch.Tensor | None:
        if not inside[i]:
            return None
        d = delta_at(i)
        if not relative:
            return d
        norms = d.flatten(1).norm(dim=1)
        scale = torch.where(norms > 0, mags.to(d.device, d.dtype) / norms.clamp_min(torch.finfo(d.dtype).tiny),
                            torch.zeros_like(norms))
        return d * scale.view(-1, *([1] * (d.dim() - 1)))

    return delta_h, relative


# -- applying per-step directions -------------------------------------------------------------------

def edit_with_deltas(backbone: Backbone, requests: Sequence[EditRequest], sampler: SamplerConfig,
                     deltas: torch.Tensor, injection: str = "plain", info: Sequence[dict] | None = None,
                     spec: HSpaceEditOptions = HSpaceEditOptions()) -> list[EditOutput]:
    """Unedited and edited images; deltas (B, T, *h) hold each request's Δh_t (strength included, absolute),
    applied with `spec`'s strength scale and window.

    A zero Δh (strength 0) adds exact zeros, so that image equals the unedited one byte for byte.
    """
    if deltas.shape[1] != sampler.num_steps:
        raise ValueError(f"directions have {deltas.shape[1]} steps but the sampler runs {sampler.num_steps}; "
                         "prepare and edit must use the same sampler")
    deltas = deltas.to(backbone.device)
    schedule = Schedule.from_backbone(backbone, sampler.num_steps)
    delta_h, relative = delta_schedule(lambda i: deltas[:, i], [r.strength for r in requests], schedule, spec)
    originals = generate(backbone, requests, sampler)
    edited = generate(backbone, requests, sampler, delta_h=delta_h, injection=injection, relative_delta=relative)
    return pairs(originals, edited, info)
