"""Provenance of a metric value, and a table builder that refuses to mix provenances in a column.

FID (and CLIP/LPIPS) values are only comparable when implementation, version, backbone weights,
resize and reference set agree (metrics-and-ray-facts §c), so every value carries those fields, and
`provenance_key`, their hash: the one key the metrics stage and the reports group columns on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import pandas as pd

from metrics._common import sha256_json

PROVENANCE_COLUMNS = ("implementation", "library_version", "backbone", "weights_sha256", "resize", "reference_hash")
PROVENANCE_FIELDS = ("implementation", "library_version", "backbone", "weights_sha256", "resize", "reference",
                     "metric_version")
"""What a value's provenance is made of, as stored columns (`Provenance.columns`)."""
PROVENANCE_KEY = "provenance_key"
"""Stored column: hash of the metric name and PROVENANCE_FIELDS. Values share a table column only when it is equal."""


@dataclass(frozen=True)
class Provenance:
    """Who computed a value and how; `key` names it in caches (any change invalidates them)."""

    metric: str
    implementation: str
    library_version: str
    backbone: str
    weights_sha256: str
    resize: str
    version: int = 1  # bump when our own code changes how the value is computed
    reference: str = ""
    """What a distribution metric compares against ("originals of each group", "folder <hash>"); "" otherwise.
    Part of the key: FID against the originals and FID against a folder are different metrics."""

    @property
    def key(self) -> str:
        return sha256_json(asdict(self))[:16]

    def columns(self) -> dict[str, Any]:
        """The stored provenance columns (PROVENANCE_FIELDS) and PROVENANCE_KEY."""
        return {k: v for k, v in asdict(self).items() if k not in ("metric", "version")} | {
            "metric_version": self.version, PROVENANCE_KEY: self.key}

    def replace(self, **changes: Any) -> Provenance:
        return dataclasses.replace(self, **changes)

    @staticmethod
    def of(metric: str, component: Any, version: int = 1) -> Provenance:
        """From any component exposing implementation/library_version/name/weights_sha256/resize."""
        return Provenance(metric, component.implementation, component.library_version, component.name,
                          component.weights_sha256, component.resize, version)


class ProvenanceMismatchError(ValueError):
    """Values with different provenance were about to share a table column."""


def check_same_provenance(frame: pd.DataFrame, columns: Sequence[str] = PROVENANCE_COLUMNS,
                          where: str = "values") -> None:
    """Raise ProvenanceMismatchError unless every provenance column holds one value in `frame`."""
    for col in columns:
        if col not in frame.columns:
            raise ProvenanceMismatchError(f"{where}: provenance column {col!r} is missing")
        distinct = frame[col].astype("string").fillna("<NA>").unique()
        if len(distinct) > 1:
            raise ProvenanceMismatchError(f"{where}: {col} differs ({', '.join(map(str, distinct))}); "
                                          "these values are not comparable in one column")


def build_table(aggregates: pd.DataFrame, metric: str, index: str | Sequence[str] = "method",
                columns: str | Sequence[str] = "attribute", value: str = "value",
                check: Sequence[str] = PROVENANCE_COLUMNS, require_same_n: bool = False) -> pd.DataFrame:
    """Pivot one metric into a table; each table column must share provenance (and n if asked)."""
    sub = aggregates[aggregates["metric"] == metric]
    if sub.empty:
        raise ValueError(f"no aggregate rows for metric {metric!r}")
    cols = [columns] if isinstance(columns, str) else list(columns)
    for col_key, group in sub.groupby(cols, sort=True, dropna=False):
        checked = list(check) + (["n"] if require_same_n else [])
        check_same_provenance(group, checked, where=f"{metric} column {col_key}")
    idx = [index] if isinstance(index, str) else list(index)
    if sub.duplicated(idx + cols).any():
        raise ValueError(f"{metric}: several values per cell for index {idx} and columns {cols}")
    return sub.pivot(index=idx, columns=cols, values=value)
