"""What every registered metric module's stage step receives and returns, and the helpers they share.

`StageContext` carries the run's done rows, the image store and caches, the config and the components
the stage built once (CLIP scorer, LPIPS network, FID backbone). `StageContext.inputs` is the per-unit
input check made before any metric runs: a unit whose PNG cannot be read is left out of every metric,
and a metric that cannot take a unit (LPIPS on pairs of unequal size, or smaller than its network
accepts) leaves out that unit only; each case is one warning line naming the unit, the file and the remedy.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from metrics._images import ImageStore, shape_batches
from metrics.cache import ValueCache
from metrics.provenance import Provenance

META_COLUMNS = ("unit_key", "run_id", "method", "method_version", "model", "suite", "item_id", "attribute",
                "strength", "seed")
GROUP_KEYS = ("method", "model", "suite", "attribute", "strength")
Compute = Callable[[list[int]], dict[str, np.ndarray]]


class MetricInputWarning(UserWarning):
    """A unit (or a reference file) a metric could not use; the message names it and the remedy."""


@dataclass(frozen=True)
class UnitInputs:
    """Header facts of one done unit's PNGs, read once (nothing decoded twice)."""

    unit_key: str
    original_shape: tuple[int, int]
    edited_shape: tuple[int, int]


@dataclass
class StageContext:
    rows: pd.DataFrame
    """Every row of the run (failed ones too: runtime and failure counts use them)."""
    done: pd.DataFrame
    """Done rows whose images are readable, sorted by unit_key."""
    store: ImageStore
    cache: ValueCache
    config: Any  # metrics.config.MetricsConfig
    run_dir: Path
    scorer: Any = None
    lpips: Any = None
    fid_backbone: Any = None
    reference_dir: Path | None = None
    oracle_targets: Mapping[str, tuple[str, ...]] | None = None
    inputs: dict[str, UnitInputs] = field(default_factory=dict)
    left_out: dict[str, dict[str, str]] = field(default_factory=dict)
    """metric ("*" for every image metric) -> unit_key -> the warning line that left it out."""
    notes: dict[str, dict[str, str]] = field(default_factory=dict)
    """metric -> unit_key -> a warning about a value that was kept (e.g. a truncated CLIP text)."""

    def leave_out(self, metric: str, unit_key: str, line: str) -> None:
        self.left_out.setdefault(metric, {})[unit_key] = line
        warnings.warn(line, MetricInputWarning, stacklevel=2)

    def note(self, metric: str, unit_key: str, line: str) -> None:
        self.notes.setdefault(metric, {})[unit_key] = line
        warnings.warn(line, MetricInputWarning, stacklevel=2)

    def usable(self, metric: str, check: Callable[[UnitInputs], str | None]) -> pd.DataFrame:
        """Done rows `metric` can take: `check` returns why a unit cannot be used (warned once), or None."""
        keep = []
        for i, u in enumerate(self.done["unit_key"]):
            reason = check(self.inputs[u])
            if reason:
                self.leave_out(metric, u, f"{metric}: unit {u} left out: {reason}")
            else:
                keep.append(i)
        return self.done.iloc[keep].reset_index(drop=True)

    def group_warning(self, metric: str, group: tuple) -> str:
        """The left-out lines of `metric` (and of every metric) for the units of one GROUP_KEYS group."""
        keys = {**self.left_out.get("*", {}), **self.left_out.get(metric, {}), **self.notes.get(metric, {})}
        if not keys:
            return ""
        rows = self.rows.set_index("unit_key").loc[list(keys), list(GROUP_KEYS)]
        lines = [keys[u] for u, g in zip(rows.index, rows.itertuples(index=False, name=None)) if _same_group(g, group)]
        more = f"; (and {len(lines) - 3} more units)" if len(lines) > 3 else ""
        return "; ".join(lines[:3]) + more


def _same_group(a: tuple, b: tuple) -> bool:
    return all(x == y or (pd.isna(x) and pd.isna(y)) for x, y in zip(a, b))


@dataclass
class StageOutput:
    per_image: pd.DataFrame | None = None
    aggregates: list[pd.DataFrame] = field(default_factory=list)


def cached_values(done: pd.DataFrame, metrics: Sequence[str], prov: Provenance, input_keys: Sequence[str],
                  shapes: Sequence[object], compute: Compute, batch_size: int,
                  cache: ValueCache) -> dict[str, np.ndarray]:
    """Per-unit values for `metrics` (aligned with done), computing only cache misses, in equal-shape batches."""
    units = list(done["unit_key"])
    out = {m: np.full(len(units), np.nan) for m in metrics}
    missing = []
    for i, (u, k) in enumerate(zip(units, input_keys)):
        hits = [cache.get((u, m, prov.key, k)) for m in metrics]
        if any(h is None for h in hits):
            missing.append(i)
        for m, h in zip(metrics, hits):
            out[m][i] = np.nan if h is None else h
    new = {}
    for batch in shape_batches(missing, shapes, batch_size):
        res = compute(batch)
        for m in metrics:
            for j, i in enumerate(batch):
                out[m][i] = new[(units[i], m, prov.key, input_keys[i])] = float(res[m][j])
        if len(new) >= 4096:  # flush now and then so an interrupted stage keeps its work
            cache.put_many(new)
            new = {}
    cache.put_many(new)
    return out


def per_image_frame(done: pd.DataFrame, values: dict[str, Any], prov: Provenance) -> pd.DataFrame:
    """Long per-image rows: the unit's meta columns, metric, value and the provenance columns."""
    meta = done[list(META_COLUMNS)].reset_index(drop=True)
    if not len(meta):
        return pd.DataFrame(columns=list(META_COLUMNS) + ["metric", "value"] + list(prov.columns()))
    return pd.concat([meta.assign(metric=m, value=v, **prov.columns()) for m, v in values.items()], ignore_index=True)


def mean_aggregates(per_image: pd.DataFrame, metric: str, ctx: StageContext | None = None,
                    clamp: bool = False) -> pd.DataFrame:
    """Mean (max(mean, 0) when `clamp`) and std of a per-image metric per group, with its provenance; the
    warning names the group's units left out (from `ctx`)."""
    from metrics.provenance import PROVENANCE_FIELDS, PROVENANCE_KEY

    sub = per_image[per_image["metric"] == metric]
    prov_cols = [c for c in PROVENANCE_FIELDS if c in sub.columns] + [PROVENANCE_KEY]
    out = []
    for key, g in sub.groupby(list(GROUP_KEYS) + prov_cols, sort=True, dropna=False):
        v = g["value"].to_numpy(np.float64)
        # NaN marks a unit the metric does not apply to (oracle_flip when the original already had the
        # target value): the group's value is the mean over the other units, n counts only them.
        v = v[~np.isnan(v)]
        mean = float(v.mean()) if len(v) else np.nan
        group = key[:len(GROUP_KEYS)]
        out.append({**dict(zip(list(GROUP_KEYS) + prov_cols, key)), "metric": metric,
                    "value": max(mean, 0.0) if clamp else mean,
                    "std": float(v.std(ddof=1)) if len(v) > 1 else np.nan, "n": len(v), "reference_hash": "",
                    "warning": ctx.group_warning(metric, group) if ctx is not None else ""})
    return pd.DataFrame(out)
