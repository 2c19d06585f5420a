"""Executors decide where workers run; only harness.executors.ray_executor imports ray."""
from __future__ import annotations

from harness.config import RunConfig
from harness.executors.base import Executor
from harness.executors.inprocess import InProcessExecutor


def make_executor(config: RunConfig, run_dir: str) -> Executor:
    if config.executor.kind == "inprocess":
        return InProcessExecutor(config, run_dir)
    from harness.executors.ray_executor import RayExecutor

    return RayExecutor(config, run_dir)


__all__ = ["Executor", "InProcessExecutor", "make_executor"]
