"""Feature backbones for FID/KID, chosen by name from config (`metrics.fid.backbone`).

Every backbone maps uint8 (N, 3, H, W) images to float features (N, d) and carries the fields
that make a FID value comparable: name, feature_dim, weights_sha256, resize, implementation and
library_version. Add one with `@register_backbone("name")` on a factory taking keyword options.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from harness.errors import ConfigError, MissingWeightsError
from harness.registry import Registry
from metrics._common import check_uint8_images, resolve_device, sha256_file, sha256_state_dict

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)


class FeatureBackbone(ABC):
    """uint8 images -> features, plus the provenance a FID value must carry.

    Named apart from `harness.diffusion.Backbone` (the loaded diffusion model): the two are unrelated.
    """

    name: str
    feature_dim: int
    weights_sha256: str
    resize: str
    implementation: str
    library_version: str

    @abstractmethod
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float (N, feature_dim) on the CPU."""


_REGISTRY: Registry[Callable[..., FeatureBackbone]] = Registry("backbone", "metrics.fid.backbone")


def register_backbone(name: str) -> Callable[[Callable[..., FeatureBackbone]], Callable[..., FeatureBackbone]]:
    """Register a factory `f(**options) -> FeatureBackbone` under `name`; a name may be used once."""
    return _REGISTRY.register(name)


def available_backbones() -> list[str]:
    return _REGISTRY.names()


def build_backbone(name: str, **options: object) -> FeatureBackbone:
    """Build a registered backbone. Options each factory may use: weights, device, seed,
    feature_dim, internal_dtype, clip_encoder; factories ignore the ones they do not need."""
    return _REGISTRY.get(name)(**options)


# --- torch-fidelity InceptionV3 (the FID standard) ------------------------------------------


class InceptionBackbone(FeatureBackbone):
    """torch-fidelity's FeatureExtractorInceptionV3, pool3 (2048-d), from a local weights file only."""

    def __init__(self, weights: str | Path | None, device: str = "cpu", internal_dtype: str = "float32") -> None:
        if weights is None or not Path(weights).is_file():
            raise MissingWeightsError(
                f"FID InceptionV3 weights {INCEPTION_WEIGHTS_FILE}",
                str(weights) if weights else "<metrics.fid.weights is unset>",
                "metrics.fid.weights",
                f"download {INCEPTION_WEIGHTS_URL} where there is internet and set metrics.fid.weights to "
                "the local file (the library would otherwise try to download it)",
            )
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.device = resolve_device(device)
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights),
            feature_extractor_internal_dtype=internal_dtype,
        ).to(self.device)
        self.name, self.feature_dim = "inception", 2048
        self.weights_sha256 = sha256_file(weights)
        self.resize = f"tf1-bilinear-299 (torch-fidelity), internal {internal_dtype}"
        self.implementation, self.library_version = "torch-fidelity", version("torch-fidelity")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_uint8_images(images)
        (features,) = self.net(images.to(self.device))
        return features.cpu()


@register_backbone("inception")
def _inception(weights: str | Path | None = None, device: str = "cpu", internal_dtype: str = "float32",
               **_: object) -> FeatureBackbone:
    return InceptionBackbone(weights, device, internal_dtype)


# --- random-weight test backbone ------------------------------------------------------------


class _TinyConvNet(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, dim, 3, padding=1),
            nn.AdaptiveAvgPool2d(1),  # any H x W works, no resize needed
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class RandomTestBackbone(FeatureBackbone):
    """A seeded random conv net, for tests only: its 'FID' measures nothing perceptual.

    Runs in float64 so that features do not drift with the batch size.
    """

    def __init__(self, seed: int = 0, feature_dim: int = 16) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = _TinyConvNet(feature_dim).double().eval()
        self.name, self.feature_dim = "random-test", feature_dim
        self.weights_sha256 = sha256_state_dict(self.net)
        self.resize = "none (adaptive average pool)"
        self.implementation = f"metrics.backbones random-test seed={seed} (RANDOM WEIGHTS, tests only)"
        self.library_version = version("torch")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_uint8_images(images)
        return self.net((images.double() - 128.0) / 128.0)


@register_backbone("random-test")
def _random_test(seed: int = 0, feature_dim: int = 16, **_: object) -> FeatureBackbone:
    return RandomTestBackbone(seed, feature_dim)


# --- an embedded CLIP image encoder (e.g. the project's own small CLIP) ----------------------


class ImageEncoder(Protocol):
    """What a CLIP-like model must offer to serve as a FID backbone (metrics.clip.CLIPScorer does)."""

    name: str
    embed_dim: int
    weights_sha256: str
    resize: str
    implementation: str
    library_version: str

    def image_embeddings(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor: ...


class ClipImageBackbone(FeatureBackbone):
    """Image embeddings of a loaded CLIP-like encoder, unnormalised by default as in torch-fidelity's FD_CLIP."""

    def __init__(self, encoder: ImageEncoder, normalize: bool = False) -> None:
        self.encoder, self.normalize = encoder, normalize
        self.name = f"clip:{encoder.name}" + (":l2" if normalize else "")
        self.feature_dim, self.weights_sha256 = encoder.embed_dim, encoder.weights_sha256
        self.resize = encoder.resize
        self.implementation, self.library_version = encoder.implementation, encoder.library_version

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_uint8_images(images)
        return self.encoder.image_embeddings(images, normalize=self.normalize).cpu()


@register_backbone("clip")
def _clip(clip_encoder: ImageEncoder | None = None, **_: object) -> FeatureBackbone:
    if clip_encoder is None:
        raise ConfigError("metrics.fid.backbone", "clip", remedy="the 'clip' backbone needs metrics.clip configured "
                          "(it embeds images with that model)")
    return ClipImageBackbone(clip_encoder)
