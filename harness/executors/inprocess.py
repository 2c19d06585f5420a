"""One worker in this process: for debugging, and the reference the Ray executor must match byte for byte."""
from __future__ import annotations

from typing import Any, Sequence

from harness.config import RunConfig
from harness.executors.base import OnDone, OnFailed
from harness.worker import Worker


class InProcessExecutor:
    description = "in-process (1 worker)"

    def __init__(self, config: RunConfig, run_dir: str) -> None:
        self.worker = Worker(config, run_dir, worker_id="inprocess")

    def map(self, kind: str, jobs: Sequence[Any], on_done: OnDone, on_failed: OnFailed | None = None) -> None:
        # No preemption here: unit_timeout_s needs the Ray executor (a hung call cannot be interrupted in-process).
        for job in jobs:
            on_done(job, getattr(self.worker, kind)(job))

    def close(self) -> None:
        pass
