"""The driver: config -> plan (validated, nothing written) -> store -> executor -> rows.

Everything that can be wrong with a config is found in `plan`, before any directory is created.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from tqdm import tqdm

from harness.code_fingerprint import code_fingerprints
from harness.config import RunConfig
from harness.errors import ConfigError, HarnessError
from harness.log import get_logger
from harness.models import max_sampling_steps, model_fingerprint, resolve_model
from harness.schema import to_dict
from harness.store import ConfigChangedError, RunStore, UnitRow
from harness.suites import Suite, load_suite, select_items
from harness.units import Batch, PrepareJob, ResolvedMethod, Retry, expand_grid, resolve_methods

log = get_logger()

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
    code: dict[str, str]
    """Source file -> hash, over the code of every method of the run (harness.code_fingerprint)."""

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
    _check_inputs(config, specs, suites, batches)
    return Plan(config, methods, suites, prepares, batches, fingerprints, code_fingerprints(m.cls for m in methods))


def _check_inputs(config: RunConfig, specs: dict[str, Any], suites: dict[str, Suite], batches: list[Batch]) -> None:
    """What would fail every unit it touches is refused before any work: a step count the model's scheduler
    cannot index, an empty caption for a text-to-image model."""
    used = {b.model for b in batches}
    for model in sorted(used):
        limit = max_sampling_steps(specs[model])
        if limit is not None and config.sampler.num_steps > limit:
            raise ConfigError("sampler.num_steps", config.sampler.num_steps, f"1..{limit} for model {model}",
                              "its DDIM scheduler cannot index more steps; pass fewer")
    text_items = sorted({(b.suite, b.model, u.item_id) for b in batches if specs[b.model].family == "text"
                         for u in b.units})
    for suite, model, item_id in text_items:
        item = suites[suite].item(item_id)
        if not item.prompt.strip():
            raise ConfigError(f"suites[{suite}].items[{item_id}].prompt", item.prompt, "a non-empty caption",
                              f"text-to-image model {model} needs one; fix the suite or leave the item out with `items:`")


def identity_config(p: Plan) -> dict[str, Any]:
    """What defines a run's results. Metrics settings are saved with the metric tables instead.

    The models' and the methods' code fingerprints are part of it: unit keys name models and methods, not
    weights or code, so without them a re-run after retraining a checkpoint or editing a method would keep
    the old images as done."""
    resolved = to_dict(p.config)
    resolved.pop("metrics")
    for key in PLACEMENT_KEYS:
        resolved["executor"].pop(key, None)
    resolved["model_fingerprints"] = dict(p.fingerprints)
    resolved["code_fingerprints"] = dict(p.code)
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
    retried: int = 0
    """Failed units redone by this call (--retry-failed)."""


def execute(p: Plan, progress: bool = True, retry_failed: bool = False, accept_code_change: bool = False) -> RunSummary:
    """Run (or resume) the plan. `retry_failed` also redoes the failed units of finished batches;
    `accept_code_change` continues a run whose methods' code changed since it started (recorded in the manifest)."""
    from harness.executors import make_executor

    config = p.config
    store = RunStore(config.run_dir)
    executor = None
    try:
        if not store.exists():
            # Start (or join) the cluster first: one that cannot be reached must not leave a run directory behind.
            executor = make_executor(config, str(store.root))
        _initialise(store, p, accept_code_change)
        with store.lock():
            if config.metrics:
                from harness.evaluation import save_metrics_config

                save_metrics_config(store.root, config.metrics)  # `harness metrics` works on an interrupted run
            for path in store.repair():
                log.warning("shard %s was unreadable: set aside as %s, its batch is redone", path.stem, path.name)
            done = store.done_batches()
            pending: list[Batch | Retry] = [b for b in p.batches if b.key not in done]
            retries = _retries(store, p, done) if retry_failed else []
            jobs = pending + retries
            active = {(j.units[0].method, j.units[0].model, j.units[0].suite) for j in jobs}
            prepares = [j for j in p.prepares if (j.method, j.model, j.suite) in active
                        and not store.artifact_path(j.key).is_file()]
            executor_name = "none (nothing to do)"
            metrics_path = None
            if jobs:
                executor = executor or make_executor(config, str(store.root))
                executor_name = executor.description
                _prepare(executor, prepares, progress)
                _run_batches(p, store, executor, jobs, progress)
                if config.metrics:
                    from harness.evaluation import run_metrics

                    # Sharded over the same workers, while they are up.
                    metrics_path = run_metrics(store.root, config.metrics, executor, shards=2 * workers(executor))
            rows = store.read_rows()
    finally:
        if executor is not None:
            executor.close()
    n_done = int((rows["status"] == "done").sum()) if len(rows) else 0
    if config.metrics and metrics_path is None and n_done:
        from harness.evaluation import run_metrics

        metrics_path = run_metrics(store.root, config.metrics)  # nothing was pending: recompute from caches
    return RunSummary(str(store.root), p.num_units, n_done, len(rows) - n_done, len(p.batches) - len(pending),
                      executor_name, metrics_path, sum(len(r.unit_keys) for r in retries))


def _initialise(store: RunStore, p: Plan, accept_code_change: bool) -> None:
    """Create the run or check it is the same run; a change of code only is refused with its own remedies."""
    try:
        store.initialise(identity_config(p), amendable=("code_fingerprints",) if accept_code_change else (),
                         extra={"methods": {m.label: {"name": m.cls.name, "version": m.cls.version} for m in p.methods}})
    except ConfigChangedError as exc:
        if exc.changed != ["code_fingerprints"]:
            raise
        saved = store.read_config().get("code_fingerprints") or {}
        modules = sorted(f for f in set(saved) | set(p.code) if saved.get(f) != p.code.get(f))
        users = {f: [m.label for m in p.methods if f in m.code] for f in modules}
        named = ", ".join(f"{f} ({', '.join(users[f]) or 'no longer used'})" for f in modules)
        raise HarnessError(
            f"the code of run {store.root.name!r} changed since it started: {named}. Its done units were made by "
            f"the old code. Start a new run (run_id=NEW), or continue this one with the new code for the units "
            f"still to do: add --accept-code-change (recorded in manifest.json).\n{exc.diff}") from None


def _retries(store: RunStore, p: Plan, done: set[str]) -> list[Retry]:
    """The failed units of finished batches, per batch."""
    rows = store.read_rows()
    failed = rows[rows["status"] != "done"]
    keys = {b: frozenset(g["unit_key"]) for b, g in failed.groupby("batch_key")}
    return [Retry(b, keys[b.key]) for b in p.batches if b.key in done and b.key in keys]


def _prepare(executor: Any, prepares: list[PrepareJob], progress: bool) -> None:
    if not prepares:
        return
    bar = tqdm(total=len(prepares), desc="prepare", unit="job", disable=not progress)

    def on_prepared(job: PrepareJob, result: dict) -> None:
        bar.update(1)
        if result.get("error"):
            log.warning("%s", result["error"])

    executor.map("prepare", prepares, on_prepared, lambda job, reason: log.warning(
        "prepare of %s on %s/%s failed: %s", job.method, job.model, job.suite, reason))
    bar.close()


def _run_batches(p: Plan, store: RunStore, executor: Any, jobs: list[Batch | Retry], progress: bool) -> None:
    from harness.worker import unit_row

    config = p.config
    total = sum(len(j.unit_keys) if isinstance(j, Retry) else len(j.units) for j in jobs)
    bar = tqdm(total=total, desc=f"run {config.run_id}", unit="unit", disable=not progress)
    methods = {m.label: m for m in p.methods}

    def on_batch(job: Batch | Retry, rows: list[UnitRow]) -> None:
        bar.update(len(rows))
        for row in rows:
            if row.status != "done":
                log.warning("unit %s (%s, %s, seed %s) failed: %s", row.unit_key, row.method, row.item_id,
                            row.seed, row.error)

    def on_failed(job: Batch | Retry, reason: str) -> None:
        batch = job.batch if isinstance(job, Retry) else job
        suite = p.suites[batch.suite]
        rows = [replace(unit_row(config, batch, u, suite.item(u.item_id), methods[batch.method], 0.0, "n/a",
                                 "driver"), error=reason) for u in batch.units if not isinstance(job, Retry) or u.key in job.unit_keys]
        if isinstance(job, Retry):
            store.update_shard(batch.key, rows)
        else:
            store.write_shard(batch.key, rows)
        on_batch(job, rows)

    executor.map("run_batch", jobs, on_batch, on_failed)
    bar.close()


def workers(executor: Any) -> int:
    return len(getattr(executor, "actors", [None]))
