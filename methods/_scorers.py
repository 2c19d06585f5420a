"""Image scorers methods use to choose or learn directions (Park et al.'s component choice, supervised labels).

A scorer maps images in [0, 1] (B, 3, H, W) and a prompt pair to one score per image:
- with `negative`: the zero-shot probability of `positive` against `negative` (Haas et al. Table I);
- without: the similarity of each image to `positive` (a CLIP-score-like value).
Scorers are named in method options (`scorer: {kind: ..., ...}`), so any callable can be plugged in
with `register_scorer`.

Attribute scores (`score_attribute`): how much each image shows a suite attribute's positive side. Prompt
scorers see its positive/negative prompts; a scorer that judges the attribute's (factor, value) target
instead (the world oracle) sets `reads_attribute = True` on its callable and also receives `attribute=`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, cast

import torch

from harness.errors import ConfigError
from harness.registry import Registry
from harness.suites import Attribute


class Scorer(Protocol):
    def __call__(self, images: torch.Tensor, positive: str, negative: str | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class ScorerSpec:
    kind: str = "clip"
    """Registered scorer name: "clip" (zero-shot CLIP; needs a CLIP model), or a test scorer."""
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self, prefix: str) -> None:
        # A misspelt kind would otherwise surface only when a worker's prepare builds the scorer.
        if self.kind not in SCORERS:
            raise ConfigError(f"{prefix}.kind", self.kind, SCORERS.names(), "name a registered scorer")


SCORERS: Registry[Callable[..., Scorer]] = Registry("scorer", "scorer.kind")
register_scorer = SCORERS.register


def make_scorer(spec: ScorerSpec, device: torch.device | str = "cpu") -> Scorer:
    return SCORERS.get(spec.kind)(device=device, **spec.options)


_CACHE: dict[tuple[str, str], Scorer] = {}


def cached_scorer(spec: ScorerSpec, device: torch.device | str) -> Scorer:
    """Scorers (CLIP weights) load once per process."""
    key = (repr((spec.kind, sorted(spec.options.items()))), str(device))
    if key not in _CACHE:
        _CACHE[key] = make_scorer(spec, device=device)
    return _CACHE[key]


def score_attribute(scorer: Scorer, images: torch.Tensor, attribute: Attribute) -> torch.Tensor:
    """One score per image of how much it shows `attribute`'s positive side (higher = more)."""
    if getattr(scorer, "reads_attribute", False):
        # Scorers that declare `reads_attribute` take the whole Attribute too (beyond the Protocol's signature).
        return cast(Any, scorer)(images, attribute.positive, attribute.negative, attribute=attribute)
    return scorer(images, attribute.positive, attribute.negative)


@register_scorer("channel-mean")
def channel_mean_scorer(channel: int = 0, device: Any = "cpu") -> Scorer:
    """Mean intensity of one colour channel, ignoring the prompts: a transparent scorer for tests."""

    def score(images: torch.Tensor, positive: str, negative: str | None = None) -> torch.Tensor:
        return images[:, channel].float().mean(dim=(1, 2))

    return score


@register_scorer("oracle")
def oracle_scorer(device: Any = "cpu", world: str = "shapes") -> Scorer:
    """A procedural world's exact oracle (`world`: a name in harness.world.registry, e.g. shapes or faces):
    1 where the image is valid and shows the attribute's (factor, value), else 0.

    Only for attributes with a `factor` and `value` (world suites); the prompts are not used.
    """
    from harness.world.registry import get_world  # imported lazily: only world suites need it

    read_scene = get_world(world).read

    def score(images: torch.Tensor, positive: str, negative: str | None = None, *,
              attribute: Attribute | None = None) -> torch.Tensor:
        if attribute is None or attribute.factor is None or attribute.value is None:
            raise ValueError(f"the oracle scorer needs an attribute with a factor and a value (got {attribute!r}); "
                             "use it on world suites, or a prompt scorer (kind: clip)")
        # Read the uint8 image a run stores, as the oracle metrics do.
        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        hits = []
        for image in pixels:
            reading = read_scene(image)
            hits.append(float(reading.valid and getattr(reading, attribute.factor) == attribute.value))
        return torch.tensor(hits)

    score.reads_attribute = True  # type: ignore[attr-defined]
    return score


@register_scorer("clip")
def clip_scorer(device: Any = "cpu", backend: str = "open_clip", model: str = "ViT-B-32", pretrained: str | None = None,
                model_config: str | None = None, random_weights: bool = False, logit_scale: float = 100.0,
                seed: int = 0) -> Scorer:
    """Zero-shot CLIP through the metrics package's loader (options as in metrics.clip.*; same weights)."""
    from metrics.clip import load_clip_scorer  # imported lazily: only this scorer needs CLIP weights

    clip = load_clip_scorer(backend, model, pretrained, model_config, random_weights, str(device), seed)

    def score(images: torch.Tensor, positive: str, negative: str | None = None) -> torch.Tensor:
        uint8 = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        img = clip.encode_images(uint8)
        texts = clip.encode_texts([positive] if negative is None else [positive, negative])
        cos = img @ texts.T
        if negative is None:
            return cos[:, 0]
        return torch.softmax(logit_scale * cos, dim=1)[:, 0]

    return score
