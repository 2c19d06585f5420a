"""Strength–preservation trade-off of each method from stored oracle values (no model, no method).

A strength sweep gives one point per strength: (preservation, flip), where
- flip = mean of the per-unit `oracle_flip` over eligible units (NaN units, whose original already had the
  target value or could not be read, are left out), and
- preservation = mean of the per-unit `oracle_preservation` over the units whose original was readable
  (NaN units left out),
pooled over the units of the group (seeds and items; one attribute, or all of them for the leaderboard).

The frontier F(q) = max{flip_s : preservation_s >= q} is the best flip rate reachable while keeping at least
a fraction q of the other factors. Two numbers summarise it:
- the operating point F(0.9): the highest flip at preservation >= 0.9, with the strength that reaches it
  (ties: the smaller |strength|; NaN when no strength keeps 0.9);
- the area under the frontier, AUC = ∫_0^1 F(q) dq (F = 0 where no point qualifies): 0 for a no-op (flip 0
  everywhere), 1 for an edit that flips every eligible unit and changes nothing else.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

FLIP, PRESERVATION = "oracle_flip", "oracle_preservation"
PRESERVATION_FLOOR = 0.9


def curve_points(per_image: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per (keys, strength): flip, preservation, n_eligible (units counted in flip), n (units)."""
    cols = list(keys) + ["strength", "flip", "preservation", "n_eligible", "n"]
    if per_image.empty or not {FLIP, PRESERVATION} <= set(per_image["metric"].astype(str)):
        return pd.DataFrame(columns=cols)
    sub = per_image[per_image["metric"].isin([FLIP, PRESERVATION])]
    # One row per unit (NaN flips kept: they mark ineligible units); a pivot_table would fill in the cartesian
    # product of its index levels.
    wide = (sub.drop_duplicates(["unit_key", "metric"]).set_index(list(keys) + ["strength", "unit_key", "metric"])
            ["value"].unstack("metric").reset_index())
    out = []
    for key, g in wide.groupby(list(keys) + ["strength"], sort=True, dropna=False):
        flips = g[FLIP].to_numpy(np.float64)
        eligible = flips[~np.isnan(flips)]
        out.append({**dict(zip(list(keys) + ["strength"], key)),
                    "flip": float(eligible.mean()) if len(eligible) else np.nan,
                    "preservation": float(g[PRESERVATION].astype(np.float64).mean()),
                    "n_eligible": len(eligible), "n": len(g)})
    return pd.DataFrame(out, columns=cols)


def _usable(points: pd.DataFrame) -> pd.DataFrame:
    return points[points["flip"].notna() & points["preservation"].notna()]


def frontier_auc(points: pd.DataFrame) -> float:
    """∫_0^1 max{flip : preservation >= q} dq over one method's points (NaN without a usable point)."""
    p = _usable(points)
    if p.empty:
        return np.nan
    p = p.sort_values("preservation", ascending=False)
    pres = np.clip(p["preservation"].to_numpy(np.float64), 0.0, 1.0)
    best = np.maximum.accumulate(p["flip"].to_numpy(np.float64))
    widths = pres - np.append(pres[1:], 0.0)  # F(q) = best[i] for q in (pres[i+1], pres[i]]
    return float((best * widths).sum())


def operating_point(points: pd.DataFrame, floor: float = PRESERVATION_FLOOR) -> tuple[float, float]:
    """(highest flip at preservation >= floor, its strength); ties: the smaller |strength|. NaNs if none."""
    p = _usable(points)
    p = p[p["preservation"] >= floor]
    if p.empty:
        return np.nan, np.nan
    p = p.assign(_abs=p["strength"].abs()).sort_values(["flip", "_abs"], ascending=[False, True], kind="stable")
    return float(p.iloc[0]["flip"]), float(p.iloc[0]["strength"])


def summary(per_image: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Per keys: flip_at_pres (F(0.9)), strength_at_pres, flip_pres_auc."""
    points = curve_points(per_image, keys)
    out = []
    for key, g in points.groupby(list(keys), sort=True, dropna=False):
        flip, strength = operating_point(g)
        out.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), "flip_at_pres": flip,
                    "strength_at_pres": strength, "flip_pres_auc": frontier_auc(g)})
    return pd.DataFrame(out, columns=list(keys) + ["flip_at_pres", "strength_at_pres", "flip_pres_auc"])
