"""The metrics stage: every registered metric module (metrics.registry) over a run's stored PNGs.

Images are read from the PNGs the run wrote (never from in-memory floats), each checked once before any
metric runs: a unit with an unreadable file is left out with one warning naming it (MetricInputWarning),
the rest are computed. Per-image values are cached in run_dir/metrics/ keyed by unit_key, metric,
provenance and a hash of the inputs, so a second call on the same rows runs no model at all. Every
output row carries its provenance columns and provenance_key.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from harness.errors import ConfigError
from metrics._images import ImageStore
from metrics._stage import GROUP_KEYS, META_COLUMNS, MetricInputWarning, StageContext, UnitInputs
from metrics.cache import ValueCache
from metrics.clip import load_clip_scorer
from metrics.config import MetricsConfig
from metrics.fid_stage import build_fid_backbone
from metrics.lpips_metric import build_lpips
from metrics.registry import metric_modules

ROW_COLUMNS = ("unit_key", "run_id", "method", "method_version", "model", "suite", "item_id", "attribute", "prompt",
               "target_prompt", "strength", "seed", "status", "original_path", "edited_path", "edit_seconds",
               "prepare_seconds", "prepare_key", "device")
__all__ = ["compute_metrics", "ROW_COLUMNS", "META_COLUMNS", "MetricInputWarning"]


def _check_rows(rows: pd.DataFrame) -> None:
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"metrics rows lack columns {missing}")
    dup = rows["unit_key"][rows["unit_key"].duplicated()]
    if len(dup):
        raise ValueError(f"unit_key must be unique, repeated: {sorted(dup.unique())[:5]}")


def _read_inputs(ctx: StageContext, done: pd.DataFrame) -> pd.DataFrame:
    """Check every done unit's PNGs once (present, complete, decodable); a unit with a bad file is left out
    of every metric with one warning naming it, the file and the remedy. Returns the usable rows."""
    keep = []
    for i, row in enumerate(done.itertuples(index=False)):
        shapes = {}
        for role in ("original_path", "edited_path"):
            rel = getattr(row, role)
            try:
                shapes[role] = ctx.store.check(rel)
            except Exception as exc:  # one bad file costs its unit, never the stage
                batch = getattr(row, "batch_key", None)
                redo = (f"delete shards/{batch}.parquet and re-run `harness run` to regenerate its batch" if batch
                        else "regenerate the image")
                ctx.leave_out("*", row.unit_key,
                              f"unit {row.unit_key} left out of every metric: {ctx.store.root / rel}: "
                              f"{type(exc).__name__}: {exc}; {redo}")
                break
        else:
            ctx.inputs[row.unit_key] = UnitInputs(row.unit_key, shapes["original_path"], shapes["edited_path"])
            keep.append(i)
    return done.iloc[keep].reset_index(drop=True)


def _failed_counts(rows: pd.DataFrame) -> pd.DataFrame:
    return (rows.assign(n_failed=rows["status"] != "done").groupby(list(GROUP_KEYS), dropna=False)["n_failed"]
            .sum().reset_index())


def compute_metrics(rows: pd.DataFrame, run_dir: Path, config: MetricsConfig,
                    reference_dir: Path | None = None,
                    oracle_targets: Mapping[str, tuple[str, ...]] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-image values (long: one row per unit and metric) and aggregates (one row per group and metric).

    Every registered metric module (metrics.registry) runs in its declared order. Call it on all rows of a
    run; on a subset (one worker's shard) it fills the caches and returns that subset's groups only. FID
    groups are (method, model, suite, attribute, strength).
    """
    _check_rows(rows)
    if config.fid.enabled and (config.fid.reference == "folder") != (reference_dir is not None):
        raise ConfigError("metrics.fid.reference", config.fid.reference, ["originals", "folder"],
                          "pass reference_dir exactly when reference is 'folder'")
    run_dir = Path(run_dir)
    done = rows[rows["status"] == "done"].sort_values("unit_key", kind="stable").reset_index(drop=True)

    # 1. Build every enabled component first: bad config or missing weights fail before any model runs.
    c, lp = config.clip, config.lpips
    scorer = load_clip_scorer(c.backend, c.model, c.pretrained, c.model_config, c.random_weights, config.device,
                              c.seed) if config.needs_clip_model else None
    ctx = StageContext(rows=rows, done=done, store=ImageStore(run_dir), cache=ValueCache(run_dir / "metrics"),
                       config=config, run_dir=run_dir, scorer=scorer,
                       lpips=build_lpips(lp, scorer, config.device) if lp.enabled else None,
                       fid_backbone=build_fid_backbone(config, scorer) if config.fid.enabled else None,
                       reference_dir=reference_dir, oracle_targets=oracle_targets)
    ctx.done = _read_inputs(ctx, done)

    # 2. Every registered metric module: per-image values (cached) and group aggregates.
    per_image, aggs = [], []
    for module in metric_modules():
        out = module.compute(ctx)
        if out.per_image is not None and len(out.per_image):
            per_image.append(out.per_image)
        aggs += [a for a in out.aggregates if not a.empty]

    # 3. Failure counts per group (the runtime rows, grouped by device instead, carry their own).
    grouped = [a for a in aggs if set(GROUP_KEYS) <= set(a.columns)]
    other = [a for a in aggs if not set(GROUP_KEYS) <= set(a.columns)]
    agg = pd.concat(grouped, ignore_index=True) if grouped else pd.DataFrame(columns=list(GROUP_KEYS) + ["metric",
                                                                                                        "value"])
    agg = agg.drop(columns=["n_failed"], errors="ignore").merge(_failed_counts(rows), on=list(GROUP_KEYS), how="left")
    agg = pd.concat([agg, *other], ignore_index=True)
    per = pd.concat(per_image, ignore_index=True) if per_image else \
        pd.DataFrame(columns=list(META_COLUMNS) + ["metric", "value"])
    return per, agg
