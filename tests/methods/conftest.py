"""Shared helpers and fixtures of the method tests: backbones, the uint8 view, one CPU thread, harness runs.

Helpers (import them: `from tests.methods.conftest import to_uint8, micro_unet, run_through_harness`):
- `to_uint8`: the byte view images are stored in (strength-0 and determinism checks compare it);
- `micro_unet`: a micro UNet2DModel (h = 8x4x4, ε = 3x16x16), the same diffusers class and code path as
  tiny-unet, small enough for explicit Jacobians in a second;
- `run_through_harness` / `assert_strength_zero_unedited`: one method end to end through the in-process
  executor, every unit done.
Fixtures (module scope, so each test file builds its own copies): `one_thread` (opt in with
`pytestmark = pytest.mark.usefixtures("one_thread")`), `micro`, `tiny_unet`, `tiny_sd`, `sd64` (tiny-sd in float64).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from harness.diffusion.backbone import Backbone


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def micro_unet(dtype: torch.dtype = torch.float64) -> Backbone:
    from diffusers import DDIMScheduler, UNet2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 8, 8),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=None,
        )
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                              clip_sample=False, set_alpha_to_one=True, steps_offset=1)
    return Backbone("micro-unet", "unconditional", unet.to(dtype), scheduler, resolution=16).eval()


def run_through_harness(tmp_path: Path, expected_units: int, **config: Any):
    """Run a config (keys of run_config_from_dict over small defaults) in process; assert every unit is done.

    Returns (cfg, rows) with rows = RunStore(cfg.run_dir).read_rows().
    """
    from harness.config import run_config_from_dict
    from harness.runner import execute, plan
    from harness.store import RunStore

    raw = {"run_id": "t", "suites": ["hspace_paper"], "seeds": 1,
           "executor": {"kind": "inprocess", "batch_size": 2}, "output_dir": str(tmp_path), **config}
    cfg = run_config_from_dict(raw)
    summary = execute(plan(cfg), progress=False)
    rows = RunStore(cfg.run_dir).read_rows()
    assert len(rows) == expected_units and (rows["status"] == "done").all(), \
        rows[["method", "model", "status", "error"]]
    assert summary.failed == 0
    return cfg, rows


def assert_strength_zero_unedited(cfg, rows) -> None:
    """Every strength-0 unit's stored edited PNG equals its original byte for byte (and there is one)."""
    zero = rows[rows["strength"] == 0.0]
    assert len(zero) > 0
    for _, row in zero.iterrows():
        assert (cfg.run_dir / row["original_path"]).read_bytes() == (cfg.run_dir / row["edited_path"]).read_bytes()


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread, as harness workers use: small AD graphs run far faster than with 2 contended threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def micro() -> Backbone:
    return micro_unet()


@pytest.fixture(scope="module")
def tiny_unet() -> Backbone:
    from harness.models import load_backbone

    return load_backbone("tiny-unet")


@pytest.fixture(scope="module")
def tiny_sd() -> Backbone:
    from harness.models import load_backbone

    return load_backbone("tiny-sd")


@pytest.fixture(scope="module")
def sd64(tiny_sd) -> Backbone:
    """tiny-sd in float64 on private modules: image-level comparisons free of float32 kernel rounding (the DDIM state
    stays float32, harness.diffusion.sampler)."""
    import copy
    from dataclasses import replace

    modules = {k: copy.deepcopy(getattr(tiny_sd, k)).to(torch.float64) for k in ("unet", "vae", "text_encoder")}
    return replace(tiny_sd, scheduler=copy.deepcopy(tiny_sd.scheduler), _text_cache={}, **modules)
