"""CLIP directional loss (Gal et al., StyleGAN-NADA; DiffusionCLIP; Asyrp), written once for every method that trains on it.

    Δt = normalise( mean_k [ normalise(E_T(template_k(target))) − normalise(E_T(template_k(source))) ] )
    ΔI = (normalise(E_I(edited)) − normalise(E_I(source image))) / (‖·‖ + 1e-7)
    L_direction = 1 − cos(ΔI, Δt)                  (one value per image; callers average)

The conventions follow kwonminki/Asyrp_official `losses/clip_loss.py` (`compute_text_direction`,
`clip_directional_loss`, `DirectionLoss('cosine')`):
- the text direction is the mean over templates of the per-template differences of the L2-normalised text
  embeddings, normalised again; the official averages over CLIP's 80 ImageNet templates ("a bad photo of a {}.",
  ...). Here `templates` is an option (default `("{}",)`, the prompt alone): the project's world CLIP learnt
  only its captions' grammar, and the template list is data we do not copy into the project;
- the image direction is the difference of L2-normalised image embeddings, divided by its norm + 1e-7;
- the image encoder is differentiable: images in [0, 1] (B, 3, H, W) float, resized (shortest edge, bicubic,
  antialiased), centre-cropped and normalised with the CLIP model's own preprocessing constants, as the
  official `clip_preprocess.transforms[:2] + [4:]` on tensors. The uint8 quantisation of the metrics' CLIP
  path (`metrics.clip`) is skipped, since it has no gradient.

CLIP weights load through the metrics package's loader (`metrics.clip.load_clip_scorer`, the same models and
options as the `clip` metric and the `clip` scorer: backend transformers or open_clip, local files only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, cast

import torch
import torch.nn.functional as F

from harness.errors import ConfigError

DIRECTION_EPS = 1e-7
"""Added to ‖ΔI‖ before dividing (official `clip_directional_loss`), so an unchanged image gives ΔI = 0, not NaN."""


@dataclass(frozen=True)
class ClipSpec:
    """A CLIP model, as the `clip` metric and scorer name one (metrics.clip.load_clip_scorer's arguments)."""

    backend: str = "open_clip"
    model: str = "ViT-B-16"
    pretrained: str | None = None
    model_config: str | None = None
    random_weights: bool = False
    seed: int = 0

    def validate(self, prefix: str) -> None:
        if self.backend not in ("open_clip", "transformers"):
            raise ConfigError(f"{prefix}.backend", self.backend, ["open_clip", "transformers"],
                              "the directional loss needs a differentiable image tower (registered CLIPs take uint8)")


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def text_direction(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Δt (d,) from text embeddings (K, d) of the K templates of the source and target prompts."""
    return l2_normalise((l2_normalise(target) - l2_normalise(source)).mean(dim=0))


def directional_loss(source_features: torch.Tensor, edited_features: torch.Tensor,
                     direction: torch.Tensor) -> torch.Tensor:
    """1 − cos(ΔI, Δt) per image (B,), from raw (unnormalised) image embeddings (B, d) and Δt (d,)."""
    delta = l2_normalise(edited_features) - l2_normalise(source_features)
    delta = delta / (delta.norm(dim=-1, keepdim=True) + DIRECTION_EPS)
    return 1.0 - F.cosine_similarity(delta, direction.to(delta.dtype).expand_as(delta), dim=-1)


@dataclass(frozen=True)
class Preprocess:
    """The CLIP image tower's input transform, on float tensors: shortest edge -> `resize`, centre crop, normalise."""

    resize: int | None
    crop: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if self.resize is not None:
            h, w = x.shape[-2:]
            scale = self.resize / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            if size != (h, w):  # an exact no-op when the images already have the size (world: 32 px)
                x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        if self.crop is not None:
            ch, cw = self.crop
            h, w = x.shape[-2:]
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))  # torchvision CenterCrop
            x = x[..., top:top + ch, left:left + cw]
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def _hf_preprocess(processor: Any) -> Preprocess:
    ip = processor.image_processor
    size = dict(ip.size) if ip.do_resize else {}
    resize = size.get("shortest_edge") or (min(size["height"], size["width"]) if "height" in size else None)
    crop = (ip.crop_size["height"], ip.crop_size["width"]) if ip.do_center_crop else None
    return Preprocess(resize, crop, tuple(ip.image_mean), tuple(ip.image_std))


def _open_clip_preprocess(transform: Any) -> Preprocess:
    from torchvision import transforms as T

    resize = crop = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    for t in getattr(transform, "transforms", []):
        if isinstance(t, T.Resize):
            resize = t.size if isinstance(t.size, int) else min(t.size)
        elif isinstance(t, T.CenterCrop):
            crop = tuple(t.size)
        elif isinstance(t, T.Normalize):
            mean, std = tuple(t.mean), tuple(t.std)
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        raise ValueError(f"open_clip preprocessing without a 3-channel Normalize: {transform!r}")
    return Preprocess(resize, crop, (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]))


_LOADED: dict[tuple[ClipSpec, str], "DirectionalClip"] = {}


def load_directional_clip(spec: ClipSpec, device: torch.device | str = "cpu") -> "DirectionalClip":
    """One frozen CLIP per (spec, device) per process: loading takes seconds, and nothing ever changes it."""
    key = (spec, str(device))
    if key not in _LOADED:
        _LOADED[key] = DirectionalClip(spec, device)
    return _LOADED[key]


class DirectionalClip:
    """A CLIP model for the directional loss: frozen, with differentiable image features."""

    def __init__(self, spec: ClipSpec, device: torch.device | str = "cpu") -> None:
        from metrics.clip import load_clip_scorer  # lazily: only training methods need CLIP weights

        self.spec = spec
        # Any: the backend's concrete scorer (transformers: model + processor; open_clip: model + preprocess)
        self.scorer: Any = cast(Any, load_clip_scorer(spec.backend, spec.model, spec.pretrained, spec.model_config,
                                                     spec.random_weights, str(device), spec.seed))
        self.model = self.scorer.model
        self.model.requires_grad_(False)
        if spec.backend == "transformers":
            self.preprocess = _hf_preprocess(self.scorer.processor)
            self._encode = lambda pixels: self.model.get_image_features(pixel_values=pixels)
        else:
            self.preprocess = _open_clip_preprocess(self.scorer.preprocess)
            self._encode = self.model.encode_image

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image embeddings (B, d), differentiable in `images` (float (B, 3, H, W) in [0, 1], not clamped)."""
        pixels = self.preprocess(images.to(self.device, torch.float32))
        return self._encode(pixels).float()

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N, d)."""
        return self.scorer.encode_texts(list(texts)).to(self.device)

    def text_direction(self, source: str, target: str, templates: Sequence[str] = ("{}",)) -> torch.Tensor:
        """Δt (d,) over `templates` (each with one "{}" for the prompt)."""
        src = self.text_features([t.format(source) for t in templates])
        trg = self.text_features([t.format(target) for t in templates])
        return text_direction(src, trg)

    def text_cosine(self, source: str, target: str) -> float:
        """cos(E_T(source), E_T(target)) of the prompts alone (Asyrp's weight of its L1 term)."""
        f = self.text_features([source, target])
        return float(f[0] @ f[1])
