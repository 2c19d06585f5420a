"""LPIPS between uint8 image pairs, via the `lpips` package (named so it does not shadow `lpips`).

The linear-layer weights ship in the lpips wheel; the torchvision backbone does not, and lpips would
download it. We check $TORCH_HOME/hub/checkpoints first and raise MissingWeightsError instead.
A random backbone (`pnet_rand=True`) is used only when the config asks for it, and is labelled.
"""
from __future__ import annotations

import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import ConfigError, MissingWeightsError
from metrics._common import check_uint8_images, resolve_device, sha256_json, sha256_state_dict
from metrics._stage import StageContext, StageOutput, UnitInputs, cached_values, mean_aggregates, per_image_frame
from metrics.provenance import Provenance
from metrics.registry import MetricSpec, register_metrics

LPIPS_NETS = ("alex", "vgg", "squeeze")
LPIPS_MIN_SIZE = {"alex": 31, "vgg": 16, "squeeze": 17}
"""Smallest image side each lpips network accepts: below it a pooling layer's output is empty and torch
raises a RuntimeError (measured on lpips 0.1.4; tests/metrics/test_lpips_metric.py checks both sides)."""


def backbone_checkpoint(net: str) -> Path:
    """Where torchvision's hub cache must hold the ImageNet weights lpips loads for `net`."""
    from torchvision.models import AlexNet_Weights, SqueezeNet1_1_Weights, VGG16_Weights

    url = {"alex": AlexNet_Weights, "vgg": VGG16_Weights, "squeeze": SqueezeNet1_1_Weights}[net].IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def check_pairs(x: torch.Tensor, y: torch.Tensor) -> None:
    check_uint8_images(x)
    check_uint8_images(y)
    if x.shape != y.shape:
        raise ValueError(f"LPIPS pairs must have equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")


def uint8_to_lpips_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the input range LPIPS was trained on."""
    return images.float() / 127.5 - 1.0


class LPIPSMetric:
    """Per-pair LPIPS distance d(x_i, y_i) for uint8 (N, 3, H, W) batches."""

    def __init__(self, net: str = "alex", random_backbone: bool = False, seed: int = 0, device: str = "cpu") -> None:
        if net not in LPIPS_NETS:
            raise ConfigError("metrics.lpips.net", net, LPIPS_NETS)
        if not random_backbone:
            ckpt = backbone_checkpoint(net)
            if not ckpt.is_file():
                raise MissingWeightsError(
                    f"LPIPS {net} backbone {ckpt.name}", str(ckpt.parent), "metrics.lpips.net",
                    f"put {ckpt.name} in $TORCH_HOME/hub/checkpoints, or for tests only set "
                    "metrics.lpips.random_backbone: true",
                )
        import lpips

        # pnet_rand=True draws the backbone from the global RNG: seed it without disturbing the caller's.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # lpips 0.1.4 still calls torchvision with pretrained=...; the deprecation is theirs, not ours
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision.models._utils")
            torch.manual_seed(seed)
            self.net = lpips.LPIPS(net=net, pnet_rand=random_backbone, verbose=False)
        self.device = resolve_device(device)
        self.net = self.net.to(self.device).eval()
        self.min_size = LPIPS_MIN_SIZE[net]
        self.name = f"lpips-{net}" + ("-random" if random_backbone else "")
        self.weights_sha256 = sha256_state_dict(self.net)
        self.resize = "none (native resolution)"
        self.implementation = "lpips v0.1" + (f" RANDOM BACKBONE seed={seed} (tests only)" if random_backbone else "")
        self.library_version = version("lpips")

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_pairs(x, y)
        d = self.net(uint8_to_lpips_range(x).to(self.device), uint8_to_lpips_range(y).to(self.device))
        return d.reshape(-1).double().cpu()


class ClipFeatureLPIPS:
    """LPIPS's distance with uniform layer weights on a CLIP vision tower: the embedded stand-in when the
    AlexNet/VGG weights are absent (e.g. the world CLIP). Labelled as such in its provenance.

    d(x, y) = sum over layers l of mean over tokens of || n(f_l(x)) - n(f_l(y)) ||^2, where f_l are the
    vision transformer's hidden states after embedding and after each layer, and n scales each token's
    feature vector to unit length (LPIPS eq. 1 with w_l = 1: its "baseline" variant, no learned weights).
    """

    def __init__(self, scorer: Any) -> None:
        if not hasattr(scorer, "model") or not hasattr(scorer.model, "vision_model"):
            raise ConfigError("metrics.lpips.backbone", "clip-features", ["lpips"],
                              "clip-features needs metrics.clip.backend: transformers (a CLIPModel directory)")
        self.scorer, self.device = scorer, scorer.device
        self.min_size = 1  # the CLIP processor resizes every image to its own input size
        self.name = f"clip-features:{scorer.name}"
        self.weights_sha256, self.resize = scorer.weights_sha256, scorer.resize
        self.implementation = "LPIPS formula, uniform layer weights, on CLIP vision hidden states (not AlexNet LPIPS)"
        self.library_version = scorer.library_version

    def hidden_states(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pixels = self.scorer.processor(images=[im.cpu() for im in images], return_tensors="pt")["pixel_values"]
        out = self.scorer.model.vision_model(pixel_values=pixels.to(self.device), output_hidden_states=True)
        return out.hidden_states

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_pairs(x, y)
        total = torch.zeros(x.shape[0], dtype=torch.float64)
        for fx, fy in zip(self.hidden_states(x), self.hidden_states(y)):
            fx, fy = (torch.nn.functional.normalize(f.double(), dim=-1, eps=1e-10) for f in (fx, fy))
            total += ((fx - fy) ** 2).sum(-1).mean(-1).cpu()
        return total


def build_lpips(config: Any, scorer: Any, device: str) -> Any:
    """The configured LPIPS: the lpips package's networks, or the CLIP-feature stand-in."""
    if config.backbone == "clip-features":
        return ClipFeatureLPIPS(scorer)
    return LPIPSMetric(config.net, config.random_backbone, config.seed, device)


# -- the metrics-stage step ----------------------------------------------------------------------------

def _pair_problem(u: UnitInputs, min_size: int, name: str) -> str | None:
    """Why LPIPS cannot compare this unit's edit with its original, and the remedy; None when it can."""
    (eh, ew), (oh, ow) = u.edited_shape, u.original_shape
    if (eh, ew) != (oh, ow):
        return (f"edited image is {ew}x{eh} but its original is {ow}x{oh}; LPIPS compares equal sizes: the method "
                "must return the edit at its original's size")
    if min(eh, ew) < min_size:
        return (f"images are {ew}x{eh}, under the {min_size} px {name} accepts; use larger images, another "
                "metrics.lpips.net, or metrics.lpips.backbone: clip-features")
    return None


@register_metrics("lpips", MetricSpec("lpips", "per_image", "min"), order=20)
def lpips_stage(ctx: StageContext) -> StageOutput:
    """Per-pair LPIPS(edit, original) for every unit whose pair the network can take."""
    metric = ctx.lpips
    if metric is None or not len(ctx.done):
        return StageOutput()
    done = ctx.usable("lpips", lambda u: _pair_problem(u, metric.min_size, metric.name))
    store = ctx.store
    ed, og = list(done["edited_path"]), list(done["original_path"])
    keys = [sha256_json([store.sha(e), store.sha(o)]) for e, o in zip(ed, og)]
    shapes = [(store.info(e)[1], store.info(o)[1]) for e, o in zip(ed, og)]

    def compute(b: list[int]) -> dict[str, np.ndarray]:
        return {"lpips": metric(store.load_batch([ed[i] for i in b]), store.load_batch([og[i] for i in b])).numpy()}

    prov = Provenance.of("lpips", metric)
    values = cached_values(done, ["lpips"], prov, keys, shapes, compute, ctx.config.lpips.batch_size, ctx.cache)
    per = per_image_frame(done, values, prov)
    return StageOutput(per, [mean_aggregates(per, "lpips", ctx)])
