"""Runtime summary: seconds per edited image, with one-off preparation split out.

Input rows are work units (one edited image each) with columns method, status, edit_seconds,
prepare_seconds, device. `prepare_seconds` is read as the one-off cost (direction fitting, Jacobian
iterations, model load) charged to the unit that paid it and 0 or NaN elsewhere, so it is summed.
Only `status == "done"` units enter the per-image timings; failures are counted.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

RUNTIME_COLUMNS = ("method", "status", "edit_seconds", "prepare_seconds", "device")


def summarise_runtime(rows: pd.DataFrame, by: Sequence[str] = ("method", "device")) -> pd.DataFrame:
    """One row per `by` group: n_done, n_failed, edit_seconds_mean/median (per edited image),
    prepare_seconds_total, prepare_seconds_per_image (amortised) and seconds_per_image_amortised."""
    missing = (set(RUNTIME_COLUMNS) | set(by)) - set(rows.columns)
    if missing:
        raise ValueError(f"runtime rows lack columns {sorted(missing)}")
    out = []
    for key, g in rows.groupby(list(by), sort=True, dropna=False):
        done = g[g["status"] == "done"]
        edit = done["edit_seconds"].astype(np.float64)
        prepare_total = float(g["prepare_seconds"].astype(np.float64).fillna(0.0).sum())
        n = len(done)
        per_image_prep = prepare_total / n if n else np.nan
        out.append({
            **dict(zip(by, key if isinstance(key, tuple) else (key,))),
            "n_done": n, "n_failed": int((g["status"] != "done").sum()),
            "edit_seconds_mean": float(edit.mean()) if n else np.nan,
            "edit_seconds_median": float(edit.median()) if n else np.nan,
            "prepare_seconds_total": prepare_total,
            "prepare_seconds_per_image": per_image_prep,
            "seconds_per_image_amortised": float(edit.mean()) + per_image_prep if n else np.nan,
        })
    return pd.DataFrame(out)
