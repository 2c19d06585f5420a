"""Image scorers methods use to choose or learn directions (Park et al.'s component choice, supervised labels).

A scorer maps images in [0, 1] (B, 3, H, W) and a prompt pair to one score per image:
- with `negative`: the zero-shot probability of `positive` against `negative` (Haas et al. Table I);
- without: the similarity of each image to `positive` (a CLIP-score-like value).
Scorers are named in method options (`scorer: {kind: ..., ...}`), so any callable can be plugged in
with `register_scorer`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from harness.registry import Registry


class Scorer(Protocol):
    def __call__(self, images: torch.Tensor, positive: str, negative: str | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class ScorerSpec:
    kind: str = "clip"
    """Registered scorer name: "clip" (zero-shot CLIP; needs a CLIP model), or a test scorer."""
    options: dict[str, Any] = field(default_factory=dict)


SCORERS: Registry[Callable[..., Scorer]] = Registry("scorer", "scorer.kind")
register_scorer = SCORERS.register


def make_scorer(spec: ScorerSpec, device: torch.device | str = "cpu") -> Scorer:
    return SCORERS.get(spec.kind)(device=device, **spec.options)


@register_scorer("channel-mean")
def channel_mean_scorer(channel: int = 0, device: Any = "cpu") -> Scorer:
    """Mean intensity of one colour channel, ignoring the prompts: a transparent scorer for tests."""

    def score(images: torch.Tensor, positive: str, negative: str | None = None) -> torch.Tensor:
        return images[:, channel].float().mean(dim=(1, 2))

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
