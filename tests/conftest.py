"""Shared fixtures: offline environment, one Ray instance per session, tiny run configs."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (start/stop costs seconds)."""
    import ray

    from harness.executors.ray_executor import REPO_ROOT

    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": REPO_ROOT, "HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


def tiny_run(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A small run config dict on the tiny random models (edit it, then run_config_from_dict)."""
    raw: dict[str, Any] = {
        "run_id": "t",
        "models": ["tiny-sd", "tiny-unet"],
        "suites": ["hspace_paper"],
        "items": ["smile", "age"],
        "seeds": 2,
        "strengths": [1.0],
        "sampler": {"num_steps": 3, "eta": 0.0, "guidance_scale": 7.5},
        "methods": [{"name": "sd"}, {"name": "random-direction", "options": {"scale": 5.0}, "strengths": [-1.0, 1.0]}],
        "executor": {"kind": "inprocess", "batch_size": 2},
        "output_dir": str(tmp_path),
    }
    raw.update(overrides)
    return raw
