"""A stored run as the reports see it: rows, metric tables, manifest and config, read from disk only."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

from harness.errors import HarnessError
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
    if not store.exists():
        raise HarnessError(f"{run_dir} is not a run directory (no config.yaml)")
    rows = read_shards(store.shard_dir)
    manifest = json.loads(store.manifest_path.read_text()) if store.manifest_path.is_file() else {}
    return RunData(name=store.root.name, root=store.root, rows=rows,
                   per_image=_read_parquet(store.root / "metrics" / "per_image.parquet"),
                   aggregates=_read_parquet(store.root / "metrics" / "aggregates.parquet"),
                   manifest=manifest, config=yaml.safe_load(store.config_path.read_text()) or {})


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
