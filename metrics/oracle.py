"""Oracle metrics for runs on a procedural world (harness.world.registry): exact checks of what an edit changed.

For an edit whose attribute targets (factor, value) — from the suite's attributes — the suite's world's oracle
reads the original and the edited image (`unit_values` turns the two readings into the unit's values):
- oracle_valid: the edited image is one clean scene of the world (shapes: one object; faces: one face);
- oracle_success: the edited image's target factor equals the asked-for value;
- oracle_base_rate: the original already had the asked-for value (1), did not (0), or could not be read
  (NaN); its mean is the share of units a no-op would "succeed" on;
- oracle_flip: success among the units whose original was valid and NOT already at the target value,
  NaN for every other unit. `oracle_success` counts a no-op as a success whenever the original already
  had the target value (about one unit in two for "large" on an unconditional model), so it cannot tell
  a working method from one that changes nothing; `oracle_flip` can: a no-op scores exactly 0.
  Aggregates skip the NaNs (the mean over eligible units only; NaN where no unit is eligible);
- oracle_preservation: the fraction of the other factors left unchanged, NaN when the original could not be
  read (there is nothing to preserve; version 2 — version 1 counted such a unit as 0, which capped every
  method's preservation at the model's share of readable originals, e.g. 0.88 for the random direction on
  faces-ddpm's 20-step samples, and charged the world model's failures to the edit);
- oracle_changed:<factor>: whether that factor changed (rows of the oracle disentanglement matrix), NaN when
  the original could not be read (version 2, as preservation).
An unreadable EDIT counts as the method's failure: success 0, flip 0 when eligible, preservation 0, changed 1.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from metrics._images import ImageStore
from metrics._stage import META_COLUMNS, StageContext, StageOutput, mean_aggregates
from metrics.provenance import Provenance
from metrics.registry import MetricSpec, register_metrics

# version 2: preservation and changed:<factor> are NaN for unreadable originals (module docstring)
PROVENANCE = Provenance("oracle", "harness.world.oracle.read_scene (exact factor reading)", "1", "world-oracle", "",
                        "none (native resolution)", version=2)
FACES_PROVENANCE = Provenance("oracle", "harness.world.faces.oracle.read_face (analysis by synthesis)", "1",
                              "faces-oracle", "", "none (native resolution)", version=2)
# The oracle's metrics and their directions, declared once: the stage and the reports read them from here.
# oracle_flip leads: it is the edit column a no-op cannot score on.
METRICS = (
    MetricSpec("oracle_flip", "per_image", "max"),
    MetricSpec("oracle_base_rate", "per_image", None),
    MetricSpec("oracle_valid", "per_image", "max"),
    MetricSpec("oracle_success", "per_image", "max"),
    MetricSpec("oracle_preservation", "per_image", "max"),
    MetricSpec("oracle_changed:", "per_image", None, family=True, leaderboard=False),
)


def unit_values(orig: Any, edit: Any, factor: str, wanted: str, factor_names: Sequence[str]) -> dict[str, float]:
    """One unit's oracle values from the readings of its original and edited image.

    orig / edit: oracle readings with `valid` and one attribute per factor (any world's reading).
    """
    success = float(edit.valid and getattr(edit, factor) == wanted)
    already = orig.valid and getattr(orig, factor) == wanted
    others = [f for f in factor_names if f != factor]
    if orig.valid:
        kept = [edit.valid and getattr(orig, f) == getattr(edit, f) for f in others]
        changed = {f: float(not edit.valid or getattr(orig, f) != getattr(edit, f)) for f in factor_names}
    else:  # nothing readable to preserve: the unit does not count (like the flip rate)
        kept, changed = [], {f: math.nan for f in factor_names}
    out = {
        "oracle_valid": float(edit.valid),
        "oracle_success": success,
        "oracle_base_rate": float(already) if orig.valid else math.nan,
        "oracle_flip": success if (orig.valid and not already) else math.nan,
        "oracle_preservation": float(np.mean(kept)) if kept else math.nan,
    }
    out.update({f"oracle_changed:{f}": v for f, v in changed.items()})
    return out


def oracle_per_image(done: pd.DataFrame, store: ImageStore, targets: Mapping[str, tuple[str, ...]]) -> pd.DataFrame:
    """Per-unit oracle values for units whose attribute has a (factor, value[, world]) target (world: shapes)."""
    from harness.world.registry import get_world

    worlds = {t[2] if len(t) > 2 else "shapes" for t in targets.values()}
    if len(worlds) > 1:
        # one column set per metric: readings of two worlds have different factors and provenance
        raise ValueError(f"a run's oracle targets span several worlds {sorted(worlds)}; run each world apart")
    world = get_world(worlds.pop() if worlds else "shapes")
    provenance = FACES_PROVENANCE if world.name == "faces" else PROVENANCE

    sub = done[done["attribute"].isin(list(targets))].reset_index(drop=True)
    names = ["oracle_valid", "oracle_success", "oracle_base_rate", "oracle_flip", "oracle_preservation"]
    values: dict[str, list[float]] = {m: [] for m in names + [f"oracle_changed:{f}" for f in world.factor_names]}
    for row in sub.itertuples():
        factor, wanted = targets[row.attribute][:2]
        orig = world.read(store.load_batch([row.original_path])[0].permute(1, 2, 0).numpy())
        edit = world.read(store.load_batch([row.edited_path])[0].permute(1, 2, 0).numpy())
        for m, v in unit_values(orig, edit, factor, wanted, world.factor_names).items():
            values[m].append(v)
    meta = sub[list(META_COLUMNS)]
    frames = [meta.assign(metric=m, value=v, **provenance.columns()) for m, v in values.items()]
    return pd.concat(frames, ignore_index=True) if len(sub) else \
        pd.DataFrame(columns=list(META_COLUMNS) + ["metric", "value"])


@register_metrics("oracle", *METRICS, order=40)
def oracle_stage(ctx: StageContext) -> StageOutput:
    """Exact factor readings of the world's edits (only attributes with a (factor, value) target)."""
    if not (len(ctx.done) and ctx.config.oracle.enabled and ctx.oracle_targets):
        return StageOutput()
    per = oracle_per_image(ctx.done, ctx.store, ctx.oracle_targets)
    return StageOutput(per, [mean_aggregates(per, m, ctx) for m in per["metric"].unique()])
