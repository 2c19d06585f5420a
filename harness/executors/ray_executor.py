"""Ray executor: long-lived actors, one per GPU (or per CPU slot without GPUs), each holding loaded models.

Actors, not tasks: for GPU tasks Ray does not reuse worker processes, so tasks would reload the
pipeline every time. Work goes out one job per idle actor; a dead actor is replaced and its job
resubmitted (bounded), so a unit is never dropped.
"""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import ray
from ray.exceptions import RayActorError, WorkerCrashedError

from harness.config import RunConfig
from harness.executors.base import OnDone
from harness.worker import Worker

REPO_ROOT = str(Path(__file__).resolve().parents[2])
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "TORCH_HOME", "HARNESS_FAULTS")
MAX_ACTOR_RESTARTS = 3


class WorkerActor:
    def __init__(self, config: RunConfig, run_dir: str, worker_id: str) -> None:
        self.worker = Worker(config, run_dir, worker_id)

    def call(self, kind: str, job: Any) -> Any:
        return getattr(self.worker, kind)(job)

    def pid(self) -> int:
        return os.getpid()


def ensure_ray(address: str | None) -> bool:
    """Start (or join) Ray; returns True when this call started it and should shut it down."""
    if ray.is_initialized():
        return False
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True, runtime_env={"env_vars": env})
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=os.cpu_count(), **kwargs)
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
        self._remote = ray.remote(WorkerActor)
        self._next_id = 0
        self.actors = [self._start_actor() for _ in range(self.num_workers)]
        kind = f"{self.gpus} GPU(s)" if self.gpus else f"{cpus} CPU(s)"
        self.description = f"ray ({self.num_workers} actor(s) over {kind})"

    def _start_actor(self) -> Any:
        worker_id = f"ray-{self._next_id}"
        self._next_id += 1
        return self._remote.options(**self._options).remote(self.config, self.run_dir, worker_id)

    def map(self, kind: str, jobs: Sequence[Any], on_done: OnDone) -> None:
        queue = deque(jobs)
        idle = deque(self.actors)
        in_flight: dict[Any, tuple[Any, Any]] = {}  # ref -> (actor, job)
        restarts = 0
        while queue or in_flight:
            while queue and idle:
                actor, job = idle.popleft(), queue.popleft()
                in_flight[actor.call.remote(kind, job)] = (actor, job)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            actor, job = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except (RayActorError, WorkerCrashedError) as exc:
                restarts += 1
                if restarts > MAX_ACTOR_RESTARTS * self.num_workers:
                    raise RuntimeError(f"workers keep dying ({restarts} times); last error: {exc}") from exc
                print(f"[harness] worker died ({type(exc).__name__}); replacing it and resubmitting its job", flush=True)
                self.actors.remove(actor)
                actor = self._start_actor()
                self.actors.append(actor)
                queue.appendleft(job)
                idle.append(actor)
                continue
            idle.append(actor)
            on_done(job, result)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._owns_ray:
            ray.shutdown()
