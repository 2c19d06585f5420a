"""Ray executor: long-lived actors, one per GPU (or per CPU slot without GPUs), each holding loaded models.

Actors, not tasks: for GPU tasks Ray does not reuse worker processes, so tasks would reload the
pipeline every time. Each actor holds up to `jobs_per_worker` jobs (its next batch is already waiting
when one finishes); a dead actor is replaced and its jobs resubmitted (bounded), so a unit is never dropped.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import ray
from ray.exceptions import RayActorError, WorkerCrashedError

from harness.config import RunConfig
from harness.errors import HarnessError
from harness.executors.base import OnDone, OnFailed
from harness.log import get_logger
from harness.worker import Worker

log = get_logger("ray")

REPO_ROOT = str(Path(__file__).resolve().parents[2])
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "TORCH_HOME", "HARNESS_FAULTS")
MAX_ACTOR_RESTARTS = 3
"""Deaths of a worker on the same job before its units are recorded as failed."""


class WorkerActor:
    def __init__(self, config: RunConfig, run_dir: str, worker_id: str) -> None:
        self.worker = Worker(config, run_dir, worker_id)

    def call(self, kind: str, job: Any) -> Any:
        return getattr(self.worker, kind)(job)

    def warm(self, load_models: bool) -> int:
        """Ready for work; with `load_models`, every model of the run is loaded first, so per-unit timeouts
        measure editing, not loading."""
        if load_models:
            for model in self.worker.config.models:
                self.worker.backbone(model)
        return os.getpid()


def _existing_cluster() -> tuple[str | None, str]:
    """Ray's convention when no address is given: RAY_ADDRESS, else the cluster that `ray start` last started
    on this machine, else none (start a local instance). Returns (address, where it came from)."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    try:  # the lookup ray.init itself does (ray is pinned); a local instance when it is not there
        from ray._private.services import get_ray_address_from_environment

        found = get_ray_address_from_environment(None, None)
    except Exception:
        found = None
    return found, "the cluster `ray start` runs on this machine"


def ensure_ray(address: str | None, num_gpus: int | None = None) -> bool:
    """Join the cluster at `address` (or Ray's default one, see _existing_cluster), else start a local
    instance; returns True when this call initialised Ray and should shut it down.

    `num_gpus` declares GPUs to a local instance, real or not: the scheduling benchmark runs N
    "GPU" actors on a CPU machine this way (workers still choose their device from torch)."""
    if ray.is_initialized():
        return False
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    # Ray's own INFO lines ("Started a local Ray instance.") are replaced by the harness's, below.
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True, runtime_env={"env_vars": env},
                                  logging_level=logging.WARNING)
    source = "--address (executor.address)"
    if not address:
        address, source = _existing_cluster()
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise HarnessError(f"cannot join the Ray cluster at {address!r} (from {source}): "
                               f"{' '.join(str(exc).split())[:200]}; start it (`ray start --head`), fix the "
                               "address, or leave out --address and unset RAY_ADDRESS for a local instance") from None
        resources = ray.cluster_resources()
        log.info("joined the Ray cluster at %s (from %s): %d node(s), %d CPU(s), %d GPU(s)",
                 ray.get_runtime_context().gcs_address, source, len([n for n in ray.nodes() if n["Alive"]]),
                 int(resources.get("CPU", 0)), int(resources.get("GPU", 0)))
        return True
    # "local": a fresh instance even if Ray would otherwise look for one; this process owns it.
    before = _children()
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, num_gpus or 0), num_gpus=num_gpus, **kwargs)
    log.info("started a local Ray instance (%d CPU(s))", int(ray.cluster_resources().get("CPU", 0)))
    _start_reaper([p for key, p in _children().items() if key not in before])
    return True


def _children() -> dict[tuple[int, float], Any]:
    import psutil

    out = {}
    for child in psutil.Process().children(recursive=True):
        try:
            out[(child.pid, child.create_time())] = child
        except psutil.Error:
            continue
    return out


def _start_reaper(started: list[Any]) -> None:
    """Ray's processes fate-share with this driver by SIGKILL; its agents then spend a minute trying to report the
    raylet's death to the dead GCS before exiting. A reaper process ends them as soon as the driver is gone
    (harness.executors.reaper); it is told the processes ray.init started, by pid and start time."""
    import subprocess
    import sys

    procs = [{"pid": p.pid, "created": p.create_time()} for p in started]
    reaper = subprocess.Popen([sys.executable, "-m", "harness.executors.reaper"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              cwd=REPO_ROOT)
    assert reaper.stdin is not None  # stdin=PIPE
    reaper.stdin.write((json.dumps(procs) + "\n").encode())
    reaper.stdin.flush()
    _REAPERS.append(reaper)  # keeps the pipe open for this process's lifetime: EOF means the driver is gone


_REAPERS: list[Any] = []


def _stop_reapers() -> None:
    """After ray.shutdown: the reapers check that nothing is left and exit."""
    while _REAPERS:
        reaper = _REAPERS.pop()
        reaper.stdin.close()
        reaper.wait(timeout=30)


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
        self._starting: dict[Any, Any] = {}  # readiness ref -> actor not yet given work
        self._start_failures = 0
        self.actors: list[Any] = []
        self.ready: set[int] = set()  # id() of actors that have started (and loaded their models, with timeouts)
        for _ in range(self.num_workers):
            self._start_actor()
        kind = f"{self.gpus} GPU(s)" if self.gpus else f"{cpus} CPU(s)"
        self.description = f"ray ({self.num_workers} actor(s) over {kind})"

    def _start_actor(self) -> Any:
        worker_id = f"ray-{self._next_id}"
        self._next_id += 1
        # Per-actor env: the driver's offline flags (and test fault injection) reach joined clusters too.
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        actor = self._remote.options(**self._options, runtime_env={"env_vars": env}).remote(
            self.config, self.run_dir, worker_id)
        self.actors.append(actor)
        # Work goes only to actors that have started: a replacement the cluster has no room for (a node was
        # lost) then simply never gets any, instead of holding jobs forever.
        self._starting[actor.warm.remote(bool(self.config.executor.unit_timeout_s))] = actor
        return actor

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
            deadlines = [d for _, _, d in in_flight.values()]
            next_deadline = min(deadlines, default=float("inf"))
            wait_s = None if next_deadline == float("inf") else max(0.0, next_deadline - time.monotonic())
            ready, _ = ray.wait(list(in_flight) + list(self._starting), num_returns=1, timeout=wait_s)
            if not ready:
                for ref, (actor, job, deadline) in list(in_flight.items()):
                    if deadline <= time.monotonic():
                        del in_flight[ref]
                        self._replace(actor)
                        assert timeout is not None  # a finite deadline is set only with a timeout
                        self._fail(job, f"timed out after {timeout * len(job.units):.0f}s "
                                        f"(executor.unit_timeout_s={timeout} per unit)", on_failed)
                continue
            ref = ready[0]
            if ref in self._starting:
                self._started(ref)
                continue
            actor, job, _ = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except (RayActorError, WorkerCrashedError) as exc:
                log.warning("worker died (%s) on a %s job; replacing it", type(exc).__name__, kind)
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

    def _started(self, ref: Any) -> None:
        """An actor's readiness call returned: it takes work from now on, or is replaced if it could not start."""
        actor = self._starting.pop(ref)
        try:
            ray.get(ref)
        except (RayActorError, WorkerCrashedError) as exc:
            self._start_failures += 1
            if self._start_failures > MAX_ACTOR_RESTARTS * max(1, self.num_workers):
                raise HarnessError(f"Ray workers cannot start: {' '.join(str(exc).split())[:300]}") from None
            log.warning("a worker failed to start (%s); starting another", type(exc).__name__)
            if actor in self.actors:
                self._replace(actor)
            return
        if actor in self.actors:
            self.ready.add(id(actor))

    def _next_actor(self, in_flight: dict[Any, tuple[Any, Any, float]], depth: int, queued: int) -> Any:
        """The least-loaded started actor with room, or None. A second job per actor only while the queue holds
        at least one job per started actor, so the end of the run is not stuck behind a job waiting on a busy one."""
        candidates = [a for a in self.actors if id(a) in self.ready]
        if not candidates:
            return None
        load = {id(a): 0 for a in candidates}
        for actor, _, _ in in_flight.values():
            load[id(actor)] = load.get(id(actor), 0) + 1
        actor = min(candidates, key=lambda a: load[id(a)])
        n = load[id(actor)]
        if n == 0 or (n < depth and queued >= len(candidates)):
            return actor
        return None

    def _replace(self, actor: Any) -> Any:
        ray.kill(actor)
        self.actors.remove(actor)
        self.ready.discard(id(actor))
        for ref, a in list(self._starting.items()):
            if a is actor:
                del self._starting[ref]
        return self._start_actor()

    @staticmethod
    def _fail(job: Any, reason: str, on_failed: OnFailed | None) -> None:
        if on_failed is None:
            raise RuntimeError(reason)
        on_failed(job, reason)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        self.ready.clear()
        self._starting.clear()
        if self._owns_ray:
            ray.shutdown()
            _stop_reapers()
