"""Pieces several methods share, written once: start noise per request, prompts, paired generation, the image
an image-to-image method edits, and the condition a method continues with after an edit step (avi, park)."""
from __future__ import annotations

import math
from typing import Hashable, Literal, Sequence, TypeVar

import torch

from harness.config import SamplerConfig
from harness.diffusion import Schedule, Trace, denoise, initial_noise, make_condition, strength_start
from harness.diffusion.backbone import Backbone
from harness.diffusion.sampler import Condition, DeltaH
from harness.errors import ConfigError
from harness.hashing import stable_seed
from methods.base import EditOutput, EditRequest

K = TypeVar("K", bound=Hashable)


def start_noise(backbone: Backbone, requests: Sequence[EditRequest],
                sampler: SamplerConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x_T (and z_{T:1} when η > 0) per request: the seed's noise, or a real image's inversion."""
    x_T, noises = initial_noise([r.seed for r in requests], backbone.state_shape(), sampler.num_steps, sampler.eta,
                                device=backbone.device)
    for i, r in enumerate(requests):
        if r.x_T is not None:
            x_T[i] = r.x_T.to(x_T.device, x_T.dtype)
    return x_T, noises


def original_condition(backbone: Backbone, requests: Sequence[EditRequest], sampler: SamplerConfig) -> Condition | None:
    return make_condition(backbone, [r.item.prompt for r in requests], sampler.guidance_scale)


def target_condition(backbone: Backbone, requests: Sequence[EditRequest], sampler: SamplerConfig) -> Condition | None:
    return make_condition(backbone, edit_prompts(requests), sampler.guidance_scale)


def sample_states(backbone: Backbone, requests: Sequence[EditRequest], sampler: SamplerConfig, *,
                  delta_h: DeltaH | None = None, injection: str = "plain", cond: Condition | None = None,
                  trace: Trace | None = None, relative_delta: bool = False) -> torch.Tensor:
    """Full trajectory from each request's own x_T (and z_{T:1}): the final states x_0 (B, C, H, W), undecoded."""
    schedule = Schedule.from_backbone(backbone, sampler.num_steps)
    x_T, noises = start_noise(backbone, requests, sampler)
    if cond is None:
        cond = original_condition(backbone, requests, sampler)
    return denoise(backbone, x_T, schedule, cond, eta=sampler.eta, noises=noises, delta_h=delta_h,
                   injection=injection, trace=trace, relative_delta=relative_delta)


ContinuePrompt = Literal["original", "empty", "target"]


def continuation_condition(backbone: Backbone, requests: Sequence[EditRequest], sampler: SamplerConfig,
                           prompt: ContinuePrompt, guidance: float | None) -> Condition | None:
    """The condition for the steps after an edit step: the original, the empty or the target prompt, at
    `guidance` (None = the run's guidance scale; 1 = the conditional ε alone, no CFG). None for
    unconditional models."""
    texts = {"original": lambda r: r.item.prompt, "empty": lambda r: "",
             "target": lambda r: r.item.target_prompt or r.item.prompt}[prompt]
    scale = sampler.guidance_scale if guidance is None else guidance
    return make_condition(backbone, [texts(r) for r in requests], scale)


def check_continuation_guidance(key: str, guidance: float | None) -> None:
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise ConfigError(key, guidance, "null (the run's guidance scale) or a finite number >= 0",
                          "1 means no classifier-free guidance")


def generate(backbone: Backbone, requests: Sequence[EditRequest], sampler: SamplerConfig, *,
             delta_h: DeltaH | None = None, injection: str = "plain", cond: Condition | None = None,
             trace: Trace | None = None, relative_delta: bool = False) -> torch.Tensor:
    """Full trajectory from each request's own x_T (and z_{T:1}), decoded to images in [0, 1]."""
    return backbone.decode(sample_states(backbone, requests, sampler, delta_h=delta_h, injection=injection,
                                         cond=cond, trace=trace, relative_delta=relative_delta))


def source_states(requests: Sequence[EditRequest], generated: torch.Tensor) -> torch.Tensor:
    """The image an image-to-image method edits, as a state x_0 per request: a real image's own x_0
    (`EditRequest.x_0`), else the request's generated original (`generated`, from `sample_states`).

    A real image is edited as given, not its DDIM reconstruction (which the unit's `original` shows)."""
    x0 = generated.clone()
    for i, r in enumerate(requests):
        if r.x_0 is not None:
            x0[i] = r.x_0.to(x0.device, x0.dtype)
    return x0


def request_noise(requests: Sequence[EditRequest], shape: tuple[int, ...], purpose: str, n: int = 1,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Fresh Gaussian noise (B, n, *shape) per request, from a seed derived from the request's seed and `purpose`.

    Independent of x_T (a real image's x_T is its inversion, not noise), the same on every device (drawn on the
    CPU in float32) and whatever the batch."""
    out = []
    for r in requests:
        g = torch.Generator().manual_seed(stable_seed(purpose, r.seed))
        out.append(torch.randn((n, *shape), generator=g))
    return torch.stack(out).to(device)


def edit_prompts(requests: Sequence[EditRequest]) -> list[str]:
    """Each request's target prompt (its prompt when the item has none)."""
    return [r.item.target_prompt or r.item.prompt for r in requests]


def scaled_fraction(fraction: float, strength: float) -> float:
    """An image-to-image noise fraction of the grid (SDEdit's t₀, DiffEdit's encode ratio) scaled by a request's
    strength: |strength|·fraction, clipped to [0, 1]. The sign is not used (a prompt edit has no reverse); strength 1
    gives `fraction` exactly (the product with 1.0 is exact)."""
    if not math.isfinite(strength):
        raise ValueError(f"strength {strength} is not a finite number")
    return min(1.0, abs(strength) * fraction)


def request_starts(num_steps: int, fraction: float, requests: Sequence[EditRequest], what: str) -> list[int]:
    """Each request's start index on the grid for an image-to-image fraction scaled by its strength
    (`scaled_fraction`): the last ⌊N·fraction(s)⌋ steps are re-run, or num_steps when that is no step (nothing is
    re-run, the input is left as it is). A grid too short for the configured `fraction` itself is refused first
    (`strength_start`'s error names `what`), whatever the strengths."""
    strength_start(num_steps, fraction, what)
    starts = []
    for r in requests:
        f = scaled_fraction(fraction, r.strength)
        starts.append(strength_start(num_steps, f, f"{what} x strength") if int(num_steps * f) >= 1 else num_steps)
    return starts


def index_groups(keys: Sequence[K]) -> dict[K, list[int]]:
    """The positions of each distinct key, keys in first-seen order: a batch split by a per-request setting."""
    out: dict[K, list[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return out


def per_request_delta(directions: torch.Tensor, strengths: Sequence[float]) -> torch.Tensor:
    """Scale one h-space direction (1 or T steps, *h) by each request's strength -> (B, ...)."""
    s = torch.tensor(list(strengths), dtype=directions.dtype, device=directions.device)
    return s.view(-1, *([1] * directions.dim())) * directions.unsqueeze(0)


def pairs(originals: torch.Tensor, edited: torch.Tensor, info: Sequence[dict] | None = None) -> list[EditOutput]:
    info = info or [{} for _ in range(originals.shape[0])]
    return [EditOutput(original=o, edited=e, info=dict(i)) for o, e, i in zip(originals, edited, info)]
