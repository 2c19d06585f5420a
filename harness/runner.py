"""The driver: config -> plan (validated, nothing written) -> store -> executor -> rows.

Everything that can be wrong with a config is found in `plan`, before any directory is created.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from harness.config import RunConfig
from harness.errors import ConfigError
from harness.models import model_fingerprint, resolve_model
from harness.schema import to_dict
from harness.store import RunStore
from harness.suites import Suite, load_suite, select_items
from harness.units import Batch, PrepareJob, ResolvedMethod, expand_grid, resolve_methods

# Where work runs does not change results, so these keys may differ when a run is resumed.
PLACEMENT_KEYS = ("kind", "num_workers", "address", "gpus_per_worker", "max_retries", "unit_timeout_s",
                  "jobs_per_worker")


@dataclass
class Plan:
    config: RunConfig
    methods: list[ResolvedMethod]
    suites: dict[str, Suite]
    prepares: list[PrepareJob]
    batches: list[Batch]
    fingerprints: dict[str, str]
    """Model name -> weights fingerprint (harness.models.model_fingerprint)."""

    @property
    def num_units(self) -> int:
        return sum(len(b.units) for b in self.batches)


def plan(config: RunConfig) -> Plan:
    methods = resolve_methods(config)
    full = {name: load_suite(name) for name in config.suites}
    specs = {name: resolve_model(name) for name in config.models}
    if config.items is not None:
        known = {it.id for s in full.values() for it in s.items}
        for i, item in enumerate(config.items):
            if item not in known:
                raise ConfigError(f"items[{i}]", item, sorted(known), "no suite of this run has that item")
    suites = {name: select_items(s, config.items) for name, s in full.items()}
    if config.metrics:
        from harness.evaluation import preflight

        preflight(config.metrics)  # bad metric config or missing weights: exit 2 before any work
    fingerprints = {m: model_fingerprint(s) for m, s in specs.items()}
    prepares, batches = expand_grid(config, methods, suites, families={m: s.family for m, s in specs.items()},
                                    fingerprints=fingerprints)
    return Plan(config, methods, suites, prepares, batches, fingerprints)


def identity_config(config: RunConfig, fingerprints: dict[str, str]) -> dict[str, Any]:
    """What defines a run's results. Metrics settings are saved with the metric tables instead.

    The models' fingerprints are part of it: unit keys name models, not weights, so without them a re-run
    after retraining a checkpoint would keep the old checkpoint's images as done."""
    resolved = to_dict(config)
    resolved.pop("metrics")
    for key in PLACEMENT_KEYS:
        resolved["executor"].pop(key, None)
    resolved["model_fingerprints"] = dict(fingerprints)
    return resolved


@dataclass
class RunSummary:
    run_dir: str
    units: int
    done: int
    failed: int
    skipped_batches: int
    executor: str
    metrics_path: Any = None


def execute(p: Plan, progress: bool = True) -> RunSummary:
    from harness.executors import make_executor

    config = p.config
    store = RunStore(config.run_dir)
    store.initialise(identity_config(config, p.fingerprints), extra={"methods": {m.label: {"name": m.cls.name, "version": m.cls.version}
                                                                  for m in p.methods}})
    with store.lock():
        done = store.done_batches()
        pending = [b for b in p.batches if b.key not in done]
        labels_pending = {(b.method, b.model, b.suite) for b in pending}
        prepares = [j for j in p.prepares if (j.method, j.model, j.suite) in labels_pending
                    and not store.artifact_path(j.key).is_file()]
        executor_name = "none (nothing to do)"
        metrics_path = None
        if pending:
            executor = make_executor(config, str(store.root))
            executor_name = executor.description
            try:
                if prepares:
                    bar = tqdm(total=len(prepares), desc="prepare", unit="job", disable=not progress)
                    def on_prepared(job: PrepareJob, result: dict) -> None:
                        bar.update(1)
                        if result.get("error"):
                            tqdm.write(f"[harness] {result['error']}")

                    executor.map("prepare", prepares, on_prepared, lambda job, reason: tqdm.write(
                        f"[harness] prepare of {job.method} on {job.model}/{job.suite} failed: {reason}"))
                    bar.close()
                bar = tqdm(total=sum(len(b.units) for b in pending), desc=f"run {config.run_id}", unit="unit",
                           disable=not progress)

                def on_batch(batch: Batch, rows: list[dict]) -> None:
                    bar.update(len(rows))
                    for row in rows:
                        if row["status"] != "done":
                            tqdm.write(f"[harness] unit {row['unit_key']} ({row['method']}, {row['item_id']}, "
                                       f"seed {row['seed']}) failed: {row['error']}")

                methods = {m.label: m for m in p.methods}

                def on_failed(batch: Batch, reason: str) -> None:
                    from harness.worker import unit_row

                    suite = p.suites[batch.suite]
                    rows = [unit_row(config, batch, u, suite.item(u.item_id), methods[batch.method], 0.0, "n/a",
                                     "driver") | {"error": reason} for u in batch.units]
                    store.write_shard(batch.key, rows)
                    on_batch(batch, rows)

                executor.map("run_batch", pending, on_batch, on_failed)
                bar.close()
                if config.metrics:
                    from harness.evaluation import run_metrics

                    # Sharded over the same workers, while they are up.
                    metrics_path = run_metrics(store.root, config.metrics, executor, shards=2 * workers(executor))
            finally:
                executor.close()
        rows = store.read_rows()
    n_done = int((rows["status"] == "done").sum()) if len(rows) else 0
    if config.metrics and metrics_path is None and n_done:
        from harness.evaluation import run_metrics

        metrics_path = run_metrics(store.root, config.metrics)  # nothing was pending: recompute from caches
    return RunSummary(str(store.root), p.num_units, n_done, len(rows) - n_done, len(p.batches) - len(pending),
                      executor_name, metrics_path)


def workers(executor: Any) -> int:
    return len(getattr(executor, "actors", [None]))
