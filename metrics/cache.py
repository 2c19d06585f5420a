"""Append-only Parquet caches under run_dir/metrics/ for per-image values and backbone features.

Each writer adds a new uniquely named file (written to a temp name, then renamed), so concurrent
shards never write the same file and a crash never leaves a half-written one that readers load.
Keys name every factor of a value: unit_key, metric, provenance key, and a hash of the inputs
(image bytes, prompt), so a rewritten image or a new model can never return a stale value.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

ValueKey = tuple[str, str, str, str]  # (unit_key, metric, provenance_key, input_sha256)


def _write(frame: pd.DataFrame, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    tmp = directory / f".{name}.tmp"
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, directory / f"{name}.parquet")


def _read_all(directory: Path, columns: list[str]) -> pd.DataFrame:
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not files:
        return pd.DataFrame({c: [] for c in columns})
    return pd.concat([pd.read_parquet(f, columns=columns) for f in files], ignore_index=True)


class ValueCache:
    """Per-image scalar values: run_dir/metrics/values/*.parquet."""

    COLUMNS = ["unit_key", "metric", "provenance_key", "input_sha256", "value"]

    def __init__(self, metrics_dir: Path) -> None:
        self.directory = metrics_dir / "values"
        frame = _read_all(self.directory, self.COLUMNS)
        self._values: dict[ValueKey, float] = {
            (u, m, p, i): float(v) for u, m, p, i, v in frame[self.COLUMNS].itertuples(index=False, name=None)
        }

    def get(self, key: ValueKey) -> float | None:
        return self._values.get(key)

    def put_many(self, items: dict[ValueKey, float]) -> None:
        if not items:
            return
        rows = [(*k, float(v)) for k, v in items.items()]
        _write(pd.DataFrame(rows, columns=self.COLUMNS), self.directory)
        self._values.update(items)


class FeatureCache:
    """Backbone features by image content hash: run_dir/metrics/features/<provenance_key>/*.parquet."""

    def __init__(self, metrics_dir: Path, provenance_key: str) -> None:
        self.directory = metrics_dir / "features" / provenance_key
        frame = _read_all(self.directory, ["image_sha256", "feature"])
        self._features: dict[str, np.ndarray] = {
            s: np.frombuffer(b, dtype="<f8") for s, b in zip(frame["image_sha256"], frame["feature"])
        }

    def __contains__(self, sha: str) -> bool:
        return sha in self._features

    def get(self, sha: str) -> np.ndarray:
        return self._features[sha]

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        if not items:
            return
        # float64 little-endian bytes: exact round trip, so cached and fresh features agree bit for bit
        frame = pd.DataFrame({"image_sha256": list(items),
                              "feature": [np.asarray(v, dtype="<f8").tobytes() for v in items.values()]})
        _write(frame, self.directory)
        self._features.update({k: np.asarray(v, dtype="<f8") for k, v in items.items()})
