"""Oracle metrics for runs on the embedded world: exact checks of what an edit changed.

For an edit whose attribute targets (factor, value) — from the suite's attributes — the oracle
reads the original and the edited image:
- oracle_valid: the edited image shows exactly one clean object;
- oracle_success: the edited image's target factor equals the asked-for value;
- oracle_preservation: the fraction of the other factors left unchanged;
- oracle_changed:<factor>: whether that factor changed (rows of the oracle disentanglement matrix).
Invalid readings count as failures (success 0, preservation 0, changed 1).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from metrics._images import ImageStore
from metrics._stage import META_COLUMNS, StageContext, StageOutput, mean_aggregates
from metrics.provenance import Provenance
from metrics.registry import MetricSpec, register_metrics

PROVENANCE = Provenance("oracle", "harness.world.oracle.read_scene (exact factor reading)", "1", "world-oracle", "",
                        "none (native resolution)")
FACES_PROVENANCE = Provenance("oracle", "harness.world.faces.oracle.read_face (analysis by synthesis)", "1",
                              "faces-oracle", "", "none (native resolution)")
# The oracle's metrics and their directions, declared once: the stage and the reports read them from here.
METRICS = (
    MetricSpec("oracle_valid", "per_image", "max"),
    MetricSpec("oracle_success", "per_image", "max"),
    MetricSpec("oracle_preservation", "per_image", "max"),
    MetricSpec("oracle_changed:", "per_image", None, family=True, leaderboard=False),
)


def oracle_per_image(done: pd.DataFrame, store: ImageStore, targets: Mapping[str, tuple[str, ...]]) -> pd.DataFrame:
    """Per-unit oracle values for units whose attribute has a (factor, value[, world]) target (world: shapes)."""
    from harness.world.registry import get_world

    worlds = {t[2] if len(t) > 2 else "shapes" for t in targets.values()}
    if len(worlds) > 1:
        # one column set per metric: readings of two worlds have different factors and provenance
        raise ValueError(f"a run's oracle targets span several worlds {sorted(worlds)}; run each world apart")
    world = get_world(worlds.pop() if worlds else "shapes")
    FACTOR_NAMES, read_scene = world.factor_names, world.read
    provenance = FACES_PROVENANCE if world.name == "faces" else PROVENANCE

    sub = done[done["attribute"].isin(list(targets))].reset_index(drop=True)
    values: dict[str, list[float]] = {"oracle_valid": [], "oracle_success": [], "oracle_preservation": []}
    values.update({f"oracle_changed:{f}": [] for f in FACTOR_NAMES})
    for row in sub.itertuples():
        factor, wanted = targets[row.attribute][:2]
        orig = read_scene(store.load_batch([row.original_path])[0].permute(1, 2, 0).numpy())
        edit = read_scene(store.load_batch([row.edited_path])[0].permute(1, 2, 0).numpy())
        valid = orig.valid and edit.valid
        values["oracle_valid"].append(float(edit.valid))
        values["oracle_success"].append(float(edit.valid and getattr(edit, factor) == wanted))
        others = [f for f in FACTOR_NAMES if f != factor]
        kept = [getattr(orig, f) == getattr(edit, f) for f in others] if valid else [False] * len(others)
        values["oracle_preservation"].append(float(np.mean(kept)))
        for f in FACTOR_NAMES:
            values[f"oracle_changed:{f}"].append(float(not valid or getattr(orig, f) != getattr(edit, f)))
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
