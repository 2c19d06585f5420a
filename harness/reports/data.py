"""A stored run as the reports see it: rows, metric tables, manifest and config, read from disk only."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from harness.store import ROW_COLUMNS, RunStore
from metrics.provenance import PROVENANCE_FIELDS

PROVENANCE = PROVENANCE_FIELDS
"""The stored provenance fields (labels of split columns); columns are split on the stored provenance_key."""


@dataclass
class RunData:
    """Everything a report reads from results/<run>/ (never a model, never a method)."""

    name: str
    root: Path
    rows: pd.DataFrame
    per_image: pd.DataFrame
    aggregates: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> pd.DataFrame:
        return self.rows[self.rows["status"] == "done"]


def _read_parquet(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame()


def read_shards(shard_dir: Path) -> pd.DataFrame:
    """Every readable shard, older schemas included (a column they lack is filled with None)."""
    frames = []
    for path in sorted(shard_dir.glob("*.parquet")):
        try:
            frames.append(pd.read_parquet(path))
        except Exception:  # a truncated shard: its batch will be redone by the next run
            continue
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(ROW_COLUMNS))
    for col in ROW_COLUMNS:
        if col not in rows.columns:
            rows[col] = None
    return rows.sort_values("unit_key", ignore_index=True)


def load_run(run_dir: str | Path) -> RunData:
    store = RunStore(Path(run_dir))
    config = store.read_config()
    rows = read_shards(store.shard_dir)
    per_image, aggregates = _current_metrics(rows, _read_parquet(store.root / "metrics" / "per_image.parquet"),
                                             _read_parquet(store.root / "metrics" / "aggregates.parquet"))
    return RunData(name=store.root.name, root=store.root, rows=rows, per_image=per_image, aggregates=aggregates,
                   manifest=store.manifest(), config=config)


def _current_metrics(rows: pd.DataFrame, per_image: pd.DataFrame, aggregates: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The metric tables restricted to units that have a done row now.

    The tables are written at the end of a metrics stage; rows can disappear afterwards (an unreadable shard
    is not read, and is set aside by the next run), and a report must not average units it does not count.
    A group aggregate (FID/KID) computed over such a unit cannot be recomputed here, so it is dropped: the
    cell stays empty until `harness metrics RUN` recomputes it."""
    if not len(per_image) or "unit_key" not in per_image.columns:
        return per_image, aggregates
    done = set(rows.loc[rows["status"] == "done", "unit_key"])
    stale = ~per_image["unit_key"].isin(done)
    if not stale.any():
        return per_image, aggregates
    from metrics.fid_stage import GROUP_KEYS

    keys = [k for k in GROUP_KEYS if k in per_image.columns and k in aggregates.columns]
    if len(aggregates) and keys:
        gone = per_image.loc[stale, keys].drop_duplicates()
        hit = aggregates[keys].merge(gone.assign(_stale=True), on=keys, how="left")["_stale"].notna().to_numpy()
        aggregates = aggregates[~hit].reset_index(drop=True)
    return per_image[~stale].reset_index(drop=True), aggregates

def load_runs(run_dirs: Sequence[str | Path]) -> list[RunData]:
    runs = [load_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same directory name in two places: tell them apart by path
        for r in runs:
            r.name = str(r.root)
    return runs


def method_options(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Method label -> its options (the JSON stored on each row)."""
    out: dict[str, dict[str, Any]] = {}
    for label, text in rows[["method", "options"]].drop_duplicates("method").itertuples(index=False):
        try:
            out[label] = json.loads(text) if isinstance(text, str) and text else {}
        except ValueError:
            out[label] = {}
    return out
