"""Runtime summary: seconds per edited image, with the one-off costs split out and each counted once.

Input rows are work units (one edited image each) with columns method, status, edit_seconds,
prepare_seconds, prepare_key, device, and optionally inversion_seconds/inversion_key and compile_seconds:
- `prepare_seconds` is the time of the preparation (direction fitting, Jacobian iterations, MLP training)
  whose artifact `prepare_key` names; every unit that used it carries it, so it is counted once per key;
- `inversion_seconds` is the DDIM inversion of the unit's real input image (`inversion_key`; cached and
  shared by every unit editing that image, so also counted once per key);
- `compile_seconds` is this unit's share of the torch.compile time its batch paid (`executor.compile`),
  already divided by the batch size like `edit_seconds`, so it is summed; it is not amortised into the
  per-image figure (the compile cache makes it a once-per-machine cost).
`one_off_seconds` is the one definition of these totals: the metrics stage and the leaderboard both use it.
Only `status == "done"` units enter the per-image timings; failures are counted.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from metrics._stage import StageContext, StageOutput
from metrics.provenance import Provenance
from metrics.registry import MetricSpec, register_metrics

RUNTIME_COLUMNS = ("method", "status", "edit_seconds", "prepare_seconds", "prepare_key", "device")
ONE_OFF = {"prepare_seconds": "prepare_key", "inversion_seconds": "inversion_key"}
"""Cost column -> the column naming the cached work it paid for: counted once per distinct key."""
SUMMED = ("compile_seconds",)
"""Cost columns already split per unit: summed."""


def _float(rows: pd.DataFrame, column: str) -> pd.Series:
    if column not in rows.columns:
        return pd.Series(0.0, index=rows.index)
    return pd.to_numeric(rows[column], errors="coerce").astype(np.float64).fillna(0.0)


def one_off_seconds(rows: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Per `by` group: prepare_seconds_total and inversion_seconds_total (each cached piece of work once,
    by its key; rows without a key count as their own) and compile_seconds_total (summed)."""
    frame = rows[list(by)].copy()
    for cost, key in ONE_OFF.items():
        frame[cost] = _float(rows, cost)
        keys = rows[key] if key in rows.columns else pd.Series(None, index=rows.index, dtype=object)
        # A row without a key paid for its own work (older rows, hand-made tables): its own pseudo-key.
        frame[key] = [k if isinstance(k, str) and k else f"row:{i}" for i, k in zip(rows.index, keys)]
    for cost in SUMMED:
        frame[cost] = _float(rows, cost)
    out = frame.groupby(list(by), sort=True, dropna=False)[list(SUMMED)].sum().rename(
        columns={c: f"{c}_total" for c in SUMMED})
    for cost, key in ONE_OFF.items():
        once = frame.groupby(list(by) + [key], sort=True, dropna=False)[cost].max()
        out[f"{cost}_total"] = once.groupby(level=list(range(len(by))), dropna=False).sum()
    return out.reset_index()


def summarise_runtime(rows: pd.DataFrame, by: Sequence[str] = ("method", "device")) -> pd.DataFrame:
    """One row per `by` group: n_done, n_failed, edit_seconds_mean/median (per edited image), the one-off
    totals of `one_off_seconds`, prepare/inversion seconds per image (amortised over the done units) and
    seconds_per_image_amortised = edit mean + (prepare + inversion) per image."""
    missing = (set(RUNTIME_COLUMNS) | set(by)) - set(rows.columns)
    if missing:
        raise ValueError(f"runtime rows lack columns {sorted(missing)}")
    totals = one_off_seconds(rows, by).set_index(list(by))
    out = []
    for key, g in rows.groupby(list(by), sort=True, dropna=False):
        done = g[g["status"] == "done"]
        edit = done["edit_seconds"].astype(np.float64)
        t = totals.loc[key]
        n = len(done)
        per_image = {c: t[f"{c}_total"] / n if n else np.nan for c in ONE_OFF}
        out.append({
            **dict(zip(by, key if isinstance(key, tuple) else (key,))),
            "n_done": n, "n_failed": int((g["status"] != "done").sum()),
            "edit_seconds_mean": float(edit.mean()) if n else np.nan,
            "edit_seconds_median": float(edit.median()) if n else np.nan,
            **{f"{c}_total": float(t[f"{c}_total"]) for c in (*ONE_OFF, *SUMMED)},
            **{f"{c}_per_image": v for c, v in per_image.items()},
            "seconds_per_image_amortised": float(edit.mean()) + sum(per_image.values()) if n else np.nan,
        })
    return pd.DataFrame(out)


RUNTIME_METRICS = ("edit_seconds_mean", "edit_seconds_median", "prepare_seconds_total", "inversion_seconds_total",
                   "compile_seconds_total", "seconds_per_image_amortised")


@register_metrics("runtime", *(MetricSpec(m, "group", "min", leaderboard=False) for m in RUNTIME_METRICS), order=90)
def runtime_stage(ctx: StageContext) -> StageOutput:
    """Runtime aggregates per (method, model, suite, device), from every row (failed ones are counted)."""
    if not len(ctx.rows):
        return StageOutput()
    by = ("method", "model", "suite", "device")
    out = []
    for r in summarise_runtime(ctx.rows, by=by).to_dict("records"):
        for m in RUNTIME_METRICS:
            prov = Provenance(m, "wall-clock (harness timers)", "", "", "", "")
            out.append({k: r[k] for k in by} | {"metric": m, "value": r[m], "n": r["n_done"],
                                                "n_failed": r["n_failed"], "reference_hash": "", **prov.columns()})
    return StageOutput(None, [pd.DataFrame(out)])
