"""Ray executor: long-lived actors, one per GPU (or per CPU slot without GPUs), each holding loaded models.

Actors, not tasks: for GPU tasks Ray does not reuse worker processes, so tasks would reload the
pipeline every time. Each actor holds up to `jobs_per_worker` jobs (its next batch is already waiting
when one finishes); a dead actor is replaced and its jobs resubmitted (bounded), so a unit is never dropped.
"""
from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import ray
from ray.exceptions import RayActorError, WorkerCrashedError

from harness.config import RunConfig
from harness.executors.base import OnDone, OnFailed
from harness.worker import Worker

REPO_ROOT = str(Path(__file__).resolve().parents[2])
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "TORCH_HOME", "HARNESS_FAULTS")
MAX_ACTOR_RESTARTS = 3
"""Deaths of a worker on the same job before its units are recorded as failed."""


class WorkerActor:
    def __init__(self, config: RunConfig, run_dir: str, worker_id: str) -> None:
        self.worker = Worker(config, run_dir, worker_id)

    def call(self, kind: str, job: Any) -> Any:
        return getattr(self.worker, kind)(job)

    def warm(self) -> int:
        """Load every model of the run, so per-unit timeouts measure editing, not loading."""
        for model in self.worker.config.models:
            self.worker.backbone(model)
        return os.getpid()


def ensure_ray(address: str | None, num_gpus: int | None = None) -> bool:
    """Start (or join) Ray; returns True when this call started it and should shut it down.

    `num_gpus` declares GPUs to a local instance, real or not: the scheduling benchmark runs N
    "GPU" actors on a CPU machine this way (workers still choose their device from torch)."""
    if ray.is_initialized():
        return False
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True, runtime_env={"env_vars": env})
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, num_gpus or 0), num_gpus=num_gpus, **kwargs)
    return True


class RayExecutor:
    def __init__(self, config: RunConfig, run_dir: str) -> None:
        self.config, self.run_dir = config, run_dir
        self._owns_ray = ensure_ray(config.executor.address)
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        slots = self.gpus if self.gpus else cpus // config.executor.threads
        self.num_workers = config.executor.num_workers or max(1, slots)
        if self.gpus:
            self._options = {"num_gpus": config.executor.gpus_per_worker, "num_cpus": config.executor.threads}
        else:
            self._options = {"num_cpus": config.executor.threads}
        # Two threads per actor: the second job waits on the worker's device lock, then computes while the
        # first one writes its images (Worker.run_batch).
        self._remote = ray.remote(max_concurrency=max(2, config.executor.jobs_per_worker))(WorkerActor)
        self._next_id = 0
        self.actors = [self._start_actor() for _ in range(self.num_workers)]
        if config.executor.unit_timeout_s:
            ray.get([a.warm.remote() for a in self.actors])
        kind = f"{self.gpus} GPU(s)" if self.gpus else f"{cpus} CPU(s)"
        self.description = f"ray ({self.num_workers} actor(s) over {kind})"

    def _start_actor(self) -> Any:
        worker_id = f"ray-{self._next_id}"
        self._next_id += 1
        # Per-actor env: the driver's offline flags (and test fault injection) reach joined clusters too.
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        return self._remote.options(**self._options, runtime_env={"env_vars": env}).remote(
            self.config, self.run_dir, worker_id)

    def map(self, kind: str, jobs: Sequence[Any], on_done: OnDone, on_failed: OnFailed | None = None) -> None:
        queue = deque(jobs)
        in_flight: dict[Any, tuple[Any, Any, float]] = {}  # ref -> (actor, job, deadline)
        deaths: dict[int, int] = {}  # id(job) -> times a worker died on it
        timeout = self.config.executor.unit_timeout_s
        # A deadline cannot tell waiting from running, so a run with per-unit timeouts sends one job at a time.
        depth = 1 if timeout else self.config.executor.jobs_per_worker
        while queue or in_flight:
            while queue and (actor := self._next_actor(in_flight, depth, len(queue))) is not None:
                job = queue.popleft()
                # Prepare jobs (fitting directions, training an MLP) are one-off and have no time limit.
                limit = timeout * len(job.units) if (timeout and hasattr(job, "units")) else None
                deadline = time.monotonic() + limit if limit else float("inf")
                in_flight[actor.call.remote(kind, job)] = (actor, job, deadline)
            next_deadline = min(d for _, _, d in in_flight.values())
            wait_s = None if next_deadline == float("inf") else max(0.0, next_deadline - time.monotonic())
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=wait_s)
            if not ready:
                for ref, (actor, job, deadline) in list(in_flight.items()):
                    if deadline <= time.monotonic():
                        del in_flight[ref]
                        self._replace(actor)
                        self._fail(job, f"timed out after {timeout * len(job.units):.0f}s "
                                        f"(executor.unit_timeout_s={timeout} per unit)", on_failed)
                continue
            ref = ready[0]
            actor, job, _ = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except (RayActorError, WorkerCrashedError) as exc:
                print(f"[harness] worker died ({type(exc).__name__}) on a {kind} job; replacing it", flush=True)
                # Every job the dead worker held goes back to the queue; only the one it was running is charged.
                held = [job]
                for other, (a, j, _) in list(in_flight.items()):
                    if a is actor:
                        del in_flight[other]
                        held.append(j)
                if actor in self.actors:
                    self._replace(actor)
                deaths[id(job)] = deaths.get(id(job), 0) + 1
                if deaths[id(job)] > MAX_ACTOR_RESTARTS:
                    self._fail(job, f"the worker died {deaths[id(job)]} times running this batch", on_failed)
                    held = held[1:]
                queue.extendleft(reversed(held))
                continue
            on_done(job, result)

    def _next_actor(self, in_flight: dict[Any, tuple[Any, Any, float]], depth: int, queued: int) -> Any:
        """The least-loaded actor with room, or None. A second job per actor only while the queue holds at
        least one job per actor, so the end of the run is not stuck behind a job waiting on a busy actor."""
        load = {id(a): 0 for a in self.actors}
        for actor, _, _ in in_flight.values():
            load[id(actor)] = load.get(id(actor), 0) + 1
        actor = min(self.actors, key=lambda a: load[id(a)])
        n = load[id(actor)]
        if n == 0 or (n < depth and queued >= len(self.actors)):
            return actor
        return None

    def _replace(self, actor: Any) -> Any:
        ray.kill(actor)
        self.actors.remove(actor)
        new = self._start_actor()
        self.actors.append(new)
        if self.config.executor.unit_timeout_s:
            ray.get(new.warm.remote())
        return new

    @staticmethod
    def _fail(job: Any, reason: str, on_failed: OnFailed | None) -> None:
        if on_failed is None:
            raise RuntimeError(reason)
        on_failed(job, reason)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._owns_ray:
            ray.shutdown()
