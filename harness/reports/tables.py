"""The leaderboard: one row per (method, model, suite) — and run, when several runs are compared.

Values come only from stored rows and metric tables:
- per-image metrics (lpips, clip_score, ...): each seed's value is the mean over its units (items,
  attributes, strengths), and a cell is the mean ± std over seeds;
- metrics that exist only as group aggregates (fid, kid): mean ± std over the (attribute, strength)
  groups, since a distribution metric has no per-seed value;
- edit_s_per_image: wall-clock seconds per edited image, mean ± std over seeds; prepare_s (and
  inversion_s, compile_s when a run has them): the one-off costs, each cached piece of work counted once
  (metrics.runtime.one_off_seconds, the same definition as the metrics stage's runtime rows).
A metric computed with more than one provenance (the stored provenance_key: implementation, version,
backbone, weights, resize, reference set; the device for runtime) gets one column per provenance,
never a mix. Directions and which metrics are columns come from the metric registry (metrics.registry).
Best values are marked per column among rows of the same model and suite.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.reports import curves
from harness.reports.curves import PRESERVATION_FLOOR
from harness.reports.data import PROVENANCE, RunData
from harness.reports.render import TextTable, fmt_spread
from metrics.provenance import PROVENANCE_KEY
from metrics.registry import metric_spec
from metrics.runtime import one_off_seconds

KEYS = ("method", "model", "suite")
COUNTS = ("units", "done", "failed")
RUNTIME, PREPARE = "edit_s_per_image", "prepare_s"
ONE_OFF_COLUMNS = {PREPARE: "prepare_seconds_total", "inversion_s": "inversion_seconds_total",
                   "compile_s": "compile_seconds_total"}
"""Leaderboard column -> metrics.runtime.one_off_seconds column; prepare_s always, the others when non-zero."""
# oracle_flip is the headline edit column (success among units not already at the target); oracle_base_rate
# (share of originals already at the target) has no direction: it describes the samples, not the method.
METRIC_ORDER = ("fid", "kid", "clip_score", "lpips", "oracle_flip", "oracle_base_rate", "oracle_success",
                "oracle_preservation", "oracle_valid")


def better(metric: str) -> str | None:
    """'min' (lower is better), 'max', or None: as the metric's module declares it (metrics.registry)."""
    if metric == RUNTIME:
        return "min"
    spec = metric_spec(metric)
    return spec.better if spec else None


def _is_column(metric: str) -> bool:
    """Declared leaderboard metrics only: matrix cells, raw scores and runtime rows are not columns, and an
    undeclared metric (stored by a newer or removed module) is not guessed at."""
    spec = metric_spec(metric)
    return spec is not None and spec.leaderboard


@dataclass(frozen=True)
class Column:
    name: str
    metric: str
    better: str | None
    provenance: tuple[tuple[str, str], ...] = ()
    spread: str = "seeds"


@dataclass
class Leaderboard:
    keys: list[str]
    frame: pd.DataFrame  # keys, counts, one value column per Column and its "<name>_std"
    columns: list[Column]
    best: dict[str, set[int]] = field(default_factory=dict)  # column -> positions in frame
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """Numbers for pandas (CSV/Parquet): keys, counts, `<column>` and `<column>_std`."""
        cols = self.keys + list(COUNTS) + [n for c in self.columns for n in (c.name, f"{c.name}_std")]
        return self.frame[cols].reset_index(drop=True)

    def text_table(self) -> TextTable:
        names = [c.name for c in self.columns]
        rows = []
        for _, r in self.frame.iterrows():
            rows.append([str(r[k]) for k in self.keys] + [str(int(r[c])) for c in COUNTS]
                        + [fmt_spread(r[n], r[f"{n}_std"]) for n in names])
        offset = len(self.keys) + len(COUNTS)
        bold = {(i, offset + names.index(n)) for n, pos in self.best.items() for i in pos}
        return TextTable(self.keys + list(COUNTS) + names, rows,
                         [False] * len(self.keys) + [True] * (len(COUNTS) + len(names)), bold)


def _concat(runs: Sequence[RunData], attr: str) -> pd.DataFrame:
    parts = [getattr(r, attr).assign(run=r.name) for r in runs if len(getattr(r, attr))]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _prov_frame(part: pd.DataFrame, fields: Sequence[str]) -> pd.DataFrame:
    present = [f for f in fields if f in part.columns]
    return part[present].astype("string").fillna("")


def _labels(provs: list[dict[str, str]]) -> list[str]:
    """Shortest distinguishing label per provenance: backbone, then weights, implementation, ..."""
    order = ["backbone", "weights_sha256", "reference", "implementation", "library_version", "resize", "metric_version"]
    for n in range(1, len(order) + 1):
        labels = [" ".join((p.get(f, "")[:8] if f == "weights_sha256" else p.get(f, "")) for f in order[:n]
                           if p.get(f, "")) or "?" for p in provs]
        if len(set(labels)) == len(labels):
            return labels
    return [f"provenance {i + 1}" for i in range(len(provs))]


def _by_provenance(part: pd.DataFrame, fields: Sequence[str]) -> list[tuple[dict[str, str], pd.DataFrame]]:
    """Split by the stored provenance_key (results written before it existed: by the fields themselves)."""
    prov = _prov_frame(part, fields)
    if PROVENANCE_KEY in part.columns and part[PROVENANCE_KEY].notna().all():
        tuples = list(part[PROVENANCE_KEY].astype(str))
    else:
        tuples = list(prov.itertuples(index=False, name=None))
    distinct = list(dict.fromkeys(tuples))
    return [(dict(prov[[x == t for x in tuples]].iloc[0]), part[[x == t for x in tuples]]) for t in distinct]


def _mean_std(values: pd.Series) -> tuple[float, float]:
    v = values.dropna().to_numpy(np.float64)
    if not len(v):
        return np.nan, np.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else np.nan


def _seed_cells(sub: pd.DataFrame, keys: list[str], value: str, column: str,
                clamp: bool = False) -> list[dict[str, Any]]:
    per_seed = sub.groupby(keys + ["seed"], dropna=False)[value].mean().reset_index()
    if clamp:  # CLIP score: max(mean, 0) per seed, torchmetrics' convention (as in the metric aggregates)
        per_seed[value] = per_seed[value].clip(lower=0.0)
    out = []
    for key, g in per_seed.groupby(keys, dropna=False):
        mean, std = _mean_std(g[value])
        out.append({**dict(zip(keys, key)), "column": column, "value": mean, "std": std})
    return out


def _group_cells(sub: pd.DataFrame, keys: list[str], column: str) -> list[dict[str, Any]]:
    out = []
    for key, g in sub.groupby(keys, dropna=False):
        mean, std = _mean_std(g["value"])
        out.append({**dict(zip(keys, key)), "column": column, "value": mean, "std": std})
    return out


def _split(metric: str, groups: list[tuple[dict[str, str], pd.DataFrame]], spread: str) -> list[Column]:
    labels = _labels([p for p, _ in groups])
    return [Column(f"{metric} [{lab}]" if len(groups) > 1 else metric, metric, better(metric),
                   tuple(sorted(p.items())), spread) for lab, (p, _) in zip(labels, groups)]


def _metric_order(metric: str) -> tuple[int, str]:
    return (METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER), metric)


def build_leaderboard(runs: Sequence[RunData], sort: str | None = None,
                      best_within: Sequence[str] = ("model", "suite")) -> Leaderboard:
    keys = (["run"] if len(runs) > 1 else []) + list(KEYS)
    rows = _concat(runs, "rows")
    if rows.empty:
        frame = pd.DataFrame(columns=keys + list(COUNTS))
        return Leaderboard(keys, frame, [], notes=["no rows stored yet"])
    frame = rows.groupby(keys, sort=True, dropna=False).agg(
        units=("unit_key", "count"), done=("status", lambda s: int((s == "done").sum())),
        failed=("status", lambda s: int((s != "done").sum()))).reset_index()
    cells: list[dict[str, Any]] = []
    columns: list[Column] = []

    done = rows[rows["status"] == "done"].assign(edit_seconds=lambda d: d["edit_seconds"].astype(np.float64))
    devices = _by_provenance(done, ["device"]) if len(done) else []
    runtime_cols = [Column(f"{RUNTIME} [{p['device']}]" if len(devices) > 1 else RUNTIME, RUNTIME, "min",
                           (("device", p["device"]),)) for p, _ in devices]
    for col, (_, sub) in zip(runtime_cols, devices):
        cells += _seed_cells(sub, keys, "edit_seconds", col.name)
    columns += runtime_cols
    one_off = one_off_seconds(rows, keys)
    for name, total in ONE_OFF_COLUMNS.items():
        if name != PREPARE and not (one_off[total] > 0).any():
            continue
        cells += [{**{k: r[k] for k in keys}, "column": name, "value": r[total], "std": np.nan}
                  for r in one_off.to_dict("records")]
        columns.append(Column(name, name, None, spread=""))  # 0 for methods without the cost: not ranked

    per_image, aggs = _concat(runs, "per_image"), _concat(runs, "aggregates")
    metric_cols: list[Column] = []
    per_image_metrics: set[str] = set()
    if len(per_image):
        per_image = per_image[per_image["metric"].map(_is_column)]
        for metric, part in per_image.groupby("metric"):
            per_image_metrics.add(metric)
            groups = _by_provenance(part, PROVENANCE)
            for col, (_, sub) in zip(_split(metric, groups, "seeds"), groups):
                spec = metric_spec(metric)  # declared: _is_column kept only declared metrics
                cells += _seed_cells(sub, keys, "value", col.name, clamp=spec is not None and spec.clamp_mean)
                metric_cols.append(col)
    if len(aggs):
        aggs = aggs[aggs["metric"].map(_is_column) & ~aggs["metric"].isin(per_image_metrics)]
        for metric, part in aggs.groupby("metric"):
            groups = _by_provenance(part, PROVENANCE)
            for col, (_, sub) in zip(_split(metric, groups, "groups"), groups):
                cells += _group_cells(sub, keys, col.name)
                metric_cols.append(col)
    columns += sorted(metric_cols, key=lambda c: (_metric_order(c.metric), c.name))
    if len(per_image):
        trade = _tradeoff_cells(per_image, keys)
        if trade:
            cells += trade
            columns += TRADEOFF_COLUMNS

    if cells:
        long = pd.DataFrame(cells)
        for what, suffix in (("value", ""), ("std", "_std")):
            wide = long.pivot_table(index=keys, columns="column", values=what, aggfunc="first", dropna=False)
            wide.columns = [f"{c}{suffix}" for c in wide.columns]
            frame = frame.merge(wide.reset_index(), on=keys, how="left")
    for c in columns:
        for n in (c.name, f"{c.name}_std"):
            if n not in frame.columns:
                frame[n] = np.nan
    frame = _order(frame, keys, columns, sort)
    board = Leaderboard(keys, frame, columns)
    board.best = _best(frame, columns, [k for k in best_within if k in keys])
    board.notes = _notes(board, rows, aggs, best_within)
    return board


# The strength sweep's flip–preservation trade-off (harness/reports/curves.py), one value per row.
OPERATING_POINT, OPERATING_STRENGTH, AUC = (f"flip_at_pres{PRESERVATION_FLOOR:g}", f"strength_at_pres{PRESERVATION_FLOOR:g}",
                                            "flip_pres_auc")
TRADEOFF_COLUMNS = [Column(OPERATING_POINT, OPERATING_POINT, "max", spread=""),
                    Column(OPERATING_STRENGTH, OPERATING_STRENGTH, None, spread=""),
                    Column(AUC, AUC, "max", spread="")]


def _tradeoff_cells(per_image: pd.DataFrame, keys: list[str]) -> list[dict[str, Any]]:
    out = []
    for r in curves.summary(per_image, keys).to_dict("records"):
        for column, name in ((OPERATING_POINT, "flip_at_pres"), (OPERATING_STRENGTH, "strength_at_pres"),
                             (AUC, "flip_pres_auc")):
            out.append({**{k: r[k] for k in keys}, "column": column, "value": r[name], "std": np.nan})
    return out


def _order(frame: pd.DataFrame, keys: list[str], columns: list[Column], sort: str | None) -> pd.DataFrame:
    default = [k for k in ("model", "suite", "method", "run") if k in keys]
    frame = frame.sort_values(default, kind="stable", ignore_index=True)
    if not sort:
        return frame
    names = [c.name for c in columns]
    col = next((c for c in columns if c.name == sort), None) or next((c for c in columns if c.metric == sort), None)
    if col is not None:
        return frame.sort_values(col.name, ascending=col.better != "max", na_position="last", kind="stable",
                                 ignore_index=True)
    if sort in keys or sort in COUNTS:
        return frame.sort_values(sort, kind="stable", ignore_index=True)
    raise HarnessError(f"--sort {sort!r}: no such column; choose one of {', '.join(keys + list(COUNTS) + names)}")


def _best(frame: pd.DataFrame, columns: list[Column], within: list[str]) -> dict[str, set[int]]:
    best: dict[str, set[int]] = {}
    groups = frame.groupby(within, dropna=False).groups.values() if within else [frame.index]
    for c in columns:
        if c.better is None:
            continue
        for idx in groups:
            v = frame.loc[list(idx), c.name].astype(np.float64).dropna()
            if len(v) < 2:
                continue
            target = v.min() if c.better == "min" else v.max()
            best.setdefault(c.name, set()).update(int(i) for i in v.index[v == target])
    return best


def _collapse(warning: str) -> str:
    """'a; b; a; b' -> 'a; b' (the metrics stage joins the warnings of both image sets)."""
    parts = warning.split("; ")
    for n in range(1, len(parts)):
        if len(parts) % n == 0 and parts == parts[:n] * (len(parts) // n):
            return "; ".join(parts[:n])
    return warning


def _notes(board: Leaderboard, rows: pd.DataFrame, aggs: pd.DataFrame, within: Sequence[str]) -> list[str]:
    notes = [f"One row per {', '.join(board.keys)}. Cells: mean ± std over seeds (a seed's value is the mean "
             "over its units: items, attributes, strengths); fid/kid and other group-only metrics: mean ± std "
             "over (attribute, strength) groups, since a distribution metric has no per-seed value.",
             f"{RUNTIME}: wall-clock seconds per edited image (batch time / batch size); {PREPARE}: one-off "
             "preparation (directions, MLP), each prepared artifact counted once; inversion_s: DDIM inversions of "
             "real input images, each once; compile_s: torch.compile time, kept out of the per-image figure."]
    directed = [c for c in board.columns if c.better]
    if directed:
        low = sorted({c.metric for c in directed if c.better == "min"})
        high = sorted({c.metric for c in directed if c.better == "max"})
        rules = [f"lower is better: {', '.join(low)}" if low else "",
                 f"higher is better: {', '.join(high)}" if high else ""]
        notes.append(f"Bold: best in its column among rows of the same {' and '.join(within)} "
                     f"({'; '.join(r for r in rules if r)}).")
    by_metric: dict[str, list[Column]] = {}
    for c in board.columns:
        by_metric.setdefault(c.metric, []).append(c)
    for metric, cols in by_metric.items():
        if metric == RUNTIME or metric in ONE_OFF_COLUMNS:
            continue
        if len(cols) > 1:
            notes.append(f"{metric} was computed with {len(cols)} provenances: one column each, never mixed.")
        for c in cols:
            if not c.provenance:  # derived columns (the trade-off ones) have none: a line would be empty
                continue
            p = dict(c.provenance)
            sha = p.get("weights_sha256", "")
            notes.append(f"{c.name}: {p.get('implementation', '')}; backbone {p.get('backbone', '') or '-'}"
                         + (f"; weights sha256 {sha[:12]}" if sha else "")
                         + (f"; resize {p['resize']}" if p.get("resize") else ""))
        if len(aggs) and "warning" in aggs.columns:
            warnings = sorted({_collapse(str(w)) for w in aggs.loc[aggs["metric"] == metric, "warning"].dropna()
                               if w})
            if warnings:
                extra = len(warnings) - 1
                more = f" (and {extra} other warning{'s' if extra > 1 else ''})" if extra else ""
                notes.append(f"{metric} warning: {warnings[0]}{more}")
    if any(c.name == AUC for c in board.columns):
        notes.append(f"{OPERATING_POINT}: the highest oracle_flip among the row's strengths whose oracle_preservation "
                     f"is >= {PRESERVATION_FLOOR:g} ({OPERATING_STRENGTH}: that strength); {AUC}: area under the "
                     "frontier max{flip : preservation >= q} over q in [0, 1] (0 for a no-op). Each strength's point "
                     "pools the row's units (flip over eligible units only). Derived from the stored oracle_flip and "
                     "oracle_preservation values, so their provenance is the oracle's.")
    if any(c.metric == "oracle_flip" for c in board.columns):
        notes.append("oracle_flip (the edit column to read): success among units whose original was valid and "
                     "not already at the target value (a no-op scores 0); oracle_success also counts units whose "
                     "original already had it; oracle_base_rate: share of valid originals already at the target.")
    devices = sorted(set(rows["device"].dropna().astype(str)))
    if devices:
        notes.append("devices: " + "; ".join(devices))
    return notes
