"""Fault injection for reliability tests, driven by the HARNESS_FAULTS environment variable (JSON).

Off unless the variable is set; a run never sets it itself. Keys (unit keys as in the rows):
    raise_on:      [unit_key, ...]   the method call of any batch holding one of these units raises
    oom_batch_gt:  N                 a method call on more than N units raises torch.OutOfMemoryError
    kill_on:       unit_key          the worker process SIGKILLs itself once (a marker file in the
                                     run directory makes the replacement worker go on)
    hang_on:       unit_key          the method call sleeps for an hour (for per-unit timeouts)
    delay_s:       {unit_key: s}     the method call first sleeps the sum of its units' delays
                                     (uneven unit costs for the scheduling benchmark)
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Sequence

import torch


def _spec() -> dict[str, Any]:
    text = os.environ.get("HARNESS_FAULTS")
    return json.loads(text) if text else {}


def before_edit(unit_keys: Sequence[str], run_dir: Path) -> None:
    spec = _spec()
    if not spec:
        return
    keys = set(unit_keys)
    if spec.get("kill_on") in keys:
        marker = Path(run_dir) / f".fault-killed-{spec['kill_on']}"
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    delays = spec.get("delay_s", {})
    if delays:
        time.sleep(sum(float(delays.get(k, 0.0)) for k in keys))
    if spec.get("hang_on") in keys:
        time.sleep(3600)
    if keys & set(spec.get("raise_on", [])):
        raise RuntimeError(f"injected fault in {sorted(keys & set(spec['raise_on']))}")
    limit = spec.get("oom_batch_gt")
    if limit is not None and len(keys) > limit:
        raise torch.OutOfMemoryError(f"injected out-of-memory at batch size {len(keys)}")
