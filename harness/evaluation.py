"""The metrics stage of a run: stored PNGs in, metric tables out (results/<run>/metrics/*.parquet).

Runs by `harness metrics RUN` and at the end of `harness run` when the config has a `metrics:`
section. Missing weights stop it before anything is written, naming the file and the config key.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.store import RunStore, atomic_write_bytes


def metrics_config(raw: dict[str, Any]) -> Any:
    from metrics.config import MetricsConfig

    return MetricsConfig.from_dict(raw, prefix="metrics")


def preflight(raw: dict[str, Any]) -> None:
    """Build every enabled metric model once, so missing weights fail before any generation."""
    from metrics.clip import load_clip_scorer
    from metrics.fid_stage import build_fid_backbone
    from metrics.lpips_metric import build_lpips

    cfg = metrics_config(raw)
    if cfg.fid.enabled and cfg.fid.backbone != "clip":
        build_fid_backbone(cfg)
    scorer = None
    if cfg.needs_clip_model:
        c = cfg.clip
        scorer = load_clip_scorer(c.backend, c.model, c.pretrained, c.model_config, c.random_weights, "cpu", c.seed)
    if cfg.lpips.enabled:
        build_lpips(cfg.lpips, scorer, "cpu")


def save_metrics_config(run_dir: str | Path, raw: dict[str, Any]) -> Path:
    """Write the run's metrics settings (validated, defaults filled in) to metrics/config.yaml.

    `harness run` writes it before any work, so `harness metrics RUN` can compute the metrics of a run that
    was interrupted before its metrics stage; the stage rewrites it with what it used."""
    import yaml

    path = Path(run_dir) / "metrics" / "config.yaml"
    atomic_write_bytes(path, yaml.safe_dump(metrics_config(raw).to_dict(), sort_keys=True).encode())
    return path


def oracle_targets(store: RunStore) -> dict[str, tuple[str, str, str]]:
    """attribute -> (factor, value, world) from the run's suites, for attributes a world's oracle can check."""
    from harness.suites import load_suite

    targets = {}
    for name in store.read_config()["suites"]:
        suite = load_suite(name)
        for attr, spec in suite.attributes.items():
            if spec.factor and spec.value and suite.oracle_world:
                targets[attr] = (spec.factor, spec.value, suite.oracle_world)
    return targets


def _write(path: Path, frame: Any) -> None:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class MetricsShard:
    """Rows of some batches whose per-image values and features a worker computes into the run's caches."""

    run_dir: str
    metrics: dict[str, Any]
    rows: tuple[dict[str, Any], ...]


def compute_shard(shard: MetricsShard) -> int:
    """Fill the caches for one shard (what a worker runs); returns the number of rows."""
    from metrics.stage import compute_metrics

    store = RunStore(Path(shard.run_dir))
    cfg = metrics_config(shard.metrics)
    compute_metrics(pd.DataFrame(list(shard.rows)), store.root, cfg, _reference(cfg), oracle_targets(store))
    return len(shard.rows)


def _reference(cfg: Any) -> Path | None:
    return Path(cfg.fid.reference_dir) if cfg.fid.reference == "folder" and cfg.fid.reference_dir else None


def run_metrics(run_dir: str | Path, raw: dict[str, Any], executor: Any = None, shards: int = 0) -> Path:
    """Compute the run's metrics and write per_image.parquet and aggregates.parquet.

    With an executor, per-image values and features are first computed in parallel over shards of
    whole batches (each worker appends to the run's caches); the final pass then reads only caches and
    merges FID statistics in float64, so the tables do not depend on the sharding.
    """
    from metrics.stage import compute_metrics

    store = RunStore(Path(run_dir))
    cfg = metrics_config(raw)
    rows = store.read_rows()
    if executor is not None and shards > 1 and len(rows):
        batches = sorted(rows["batch_key"].unique())
        parts = [batches[i::shards] for i in range(shards)]
        jobs = [MetricsShard(str(store.root), raw, tuple(rows[rows["batch_key"].isin(part)].to_dict("records")))
                for part in parts if part]
        executor.map("metrics_shard", jobs, lambda job, n: None)
    per_image, aggregates = compute_metrics(rows, store.root, cfg, _reference(cfg), oracle_targets(store))
    out = store.root / "metrics"
    save_metrics_config(store.root, raw)
    _write(out / "per_image.parquet", per_image)
    _write(out / "aggregates.parquet", aggregates)
    return out / "aggregates.parquet"
