"""Comparing a method with a diffusers reference pipeline on a tiny model, to a tolerance derived from float64.

The reference pipeline is run twice on the same weights: in float64 (the truth, up to 1e-15) and in float32.
The float32 pipeline's own distance to the truth is what float32 rounding alone costs on this model and
input; our method (float32 model, float32 DDIM state) must be within a small multiple of it. A convention
that differs (a step off by one, a missing term) costs orders of magnitude more, which each test shows by
also running a deliberately wrong variant against the same tolerance.
"""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from harness.diffusion.backbone import Backbone

# How many times the float32 reference's own rounding error ours may show: our DDIM state arithmetic and
# batching differ from the pipeline's (float32 `Schedule` constants from float64 ᾱ, CFG batch layout).
SLACK = 10.0


def pipeline(cls: type, backbone: Backbone, dtype: torch.dtype, **extra: Any) -> Any:
    """A diffusers SD pipeline of class `cls` on private copies of the backbone's modules, in `dtype`."""
    parts = {name: copy.deepcopy(getattr(backbone, name)).to(dtype) for name in ("unet", "vae", "text_encoder")}
    pipe = cls(**parts, tokenizer=backbone.tokenizer, scheduler=copy.deepcopy(backbone.scheduler),
               safety_checker=None, feature_extractor=None, requires_safety_checker=False, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def float32_noise(monkeypatch: pytest.MonkeyPatch, *modules: Any) -> None:
    """Make the pipelines' `randn_tensor` draw in float32 and cast: torch draws different numbers per dtype, and
    the float64 truth must see the float32 run's noise."""
    from diffusers.utils.torch_utils import randn_tensor

    def drawn_in_float32(shape, generator=None, device=None, dtype=None, layout=None):
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)

    for module in modules:
        monkeypatch.setattr(module, "randn_tensor", drawn_in_float32)


def error(a: torch.Tensor, truth: torch.Tensor) -> float:
    return (a.double().cpu() - truth.double().cpu()).abs().max().item()


def assert_matches(ours: torch.Tensor, ref32: torch.Tensor, truth: torch.Tensor, wrong: torch.Tensor | None = None,
                   what: str = "image") -> float:
    """ours within SLACK × the float32 reference's error of the float64 truth; `wrong` (a deliberately wrong
    convention) outside it. Returns the tolerance."""
    tol = SLACK * error(ref32, truth) + 1e-7  # floor: a reference that rounds exactly still leaves ours 1 ulp
    assert error(ref32, truth) < 1e-3, f"float32 reference far from float64 ({error(ref32, truth):.2e})"
    assert error(ours, truth) <= tol, \
        f"{what}: ours {error(ours, truth):.3e} from the float64 reference, tolerance {tol:.3e}"
    if wrong is not None:
        assert error(wrong, truth) > tol, \
            f"{what}: the wrong variant passes too ({error(wrong, truth):.3e} <= {tol:.3e})"
    return tol
