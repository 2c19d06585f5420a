"""Disentanglement matrix (seed-003 Table I): how much each applied edit moves each measured attribute.

Cell (edit e, measured a) = mean over repeats r of  mean_{i in r} |s_a(edit_i) − s_a(orig_i)|,
reported with the std over repeats; `signed=True` drops the absolute value. Any scorer works:
a callable uint8 image batch -> {attribute: scores (N,)}, e.g. clip.ZeroShotAttributeScorer.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from metrics._common import sha256_json
from metrics._stage import GROUP_KEYS, StageContext, StageOutput, cached_values, per_image_frame
from metrics.provenance import Provenance
from metrics.registry import MetricSpec, register_metrics

if TYPE_CHECKING:  # imported where used: metrics.clip loads torch models' code
    from metrics.clip import ZeroShotAttributeScorer

AttributeScorer = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]
SCORE_COLUMNS = ("edit", "repeat", "measured", "orig", "edited")


def scores_from_arrays(edit: Sequence[str], repeat: Sequence[object], orig: Mapping[str, Sequence[float]],
                       edited: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """Per-image arrays -> the long score frame (one row per image and measured attribute)."""
    n = len(edit)
    if len(repeat) != n or set(orig) != set(edited):
        raise ValueError("edit/repeat lengths differ, or orig and edited measure different attributes")
    parts = []
    for a in orig:
        o, e = np.asarray(orig[a], np.float64), np.asarray(edited[a], np.float64)
        if o.shape != (n,) or e.shape != (n,):
            raise ValueError(f"attribute {a!r}: expected {n} scores, got {o.shape} and {e.shape}")
        parts.append(pd.DataFrame({"edit": list(edit), "repeat": list(repeat), "measured": a, "orig": o, "edited": e}))
    return pd.concat(parts, ignore_index=True)


def score_images(scorer: AttributeScorer, originals: torch.Tensor, edited: torch.Tensor, edit: Sequence[str],
                 repeat: Sequence[object], batch_size: int = 32) -> pd.DataFrame:
    """Score original/edited uint8 image pairs with `scorer` and return the long score frame."""
    if originals.shape != edited.shape or len(edit) != originals.shape[0]:
        raise ValueError("originals, edited and edit labels must have matching lengths and shapes")
    so: dict[str, list[torch.Tensor]] = {}
    se: dict[str, list[torch.Tensor]] = {}
    for i in range(0, originals.shape[0], batch_size):
        for out, batch in ((so, originals[i:i + batch_size]), (se, edited[i:i + batch_size])):
            for a, s in scorer(batch).items():
                out.setdefault(a, []).append(torch.as_tensor(s).double().cpu())
    return scores_from_arrays(edit, repeat, {a: torch.cat(v).numpy() for a, v in so.items()},
                              {a: torch.cat(v).numpy() for a, v in se.items()})


def disentanglement_matrix(scores: pd.DataFrame, signed: bool = False, ddof: int = 1) -> pd.DataFrame:
    """Tidy Table-I cells: columns edit, measured, mean, std, n_repeats, n_images, signed.

    `scores` has the columns in SCORE_COLUMNS; std is over repeats with `ddof` (NaN for one repeat).
    """
    missing = set(SCORE_COLUMNS) - set(scores.columns)
    if missing:
        raise ValueError(f"score frame lacks columns {sorted(missing)}")
    delta = scores["edited"].astype(np.float64) - scores["orig"].astype(np.float64)
    df = scores.assign(effect=delta if signed else delta.abs())
    per_repeat = df.groupby(["edit", "measured", "repeat"], sort=True)["effect"].agg(["mean", "size"]).reset_index()
    cells = per_repeat.groupby(["edit", "measured"], sort=True).agg(
        mean=("mean", "mean"), std=("mean", lambda v: float(np.std(v, ddof=ddof)) if len(v) > ddof else np.nan),
        n_repeats=("mean", "size"), n_images=("size", "sum"),
    ).reset_index()
    return cells.assign(signed=signed)


def to_matrix(cells: pd.DataFrame, value: str = "mean") -> pd.DataFrame:
    """Pivot tidy cells into rows = applied edit, columns = measured attribute."""
    return cells.pivot(index="edit", columns="measured", values=value)


# -- the metrics-stage step ----------------------------------------------------------------------------

def zeroshot_per_image(ctx: StageContext, scorer: ZeroShotAttributeScorer) -> pd.DataFrame:
    """s_a for every configured attribute on the original and the edited image of each unit."""
    done, store, d = ctx.done, ctx.store, ctx.config.disentanglement
    ed, og = list(done["edited_path"]), list(done["original_path"])
    keys = [sha256_json([store.sha(o), store.sha(e)]) for e, o in zip(ed, og)]
    shapes = [(store.info(e)[1], store.info(o)[1]) for e, o in zip(ed, og)]
    names = [f"zeroshot:{a}:{role}" for a in scorer.prompts for role in ("original", "edited")]

    def compute(b: list[int]) -> dict[str, np.ndarray]:
        so, se = scorer(store.load_batch([og[i] for i in b])), scorer(store.load_batch([ed[i] for i in b]))
        return {f"zeroshot:{a}:{r}": s[a].numpy()
                for a in scorer.prompts for r, s in (("original", so), ("edited", se))}

    base = Provenance.of("zeroshot", scorer.scorer)
    prov = base.replace(implementation=f"{base.implementation} zero-shot logit_scale={scorer.logit_scale} "
                                       f"prompts={sha256_json(scorer.prompts)[:12]}")
    return per_image_frame(done, cached_values(done, names, prov, keys, shapes, compute, d.batch_size, ctx.cache),
                           prov)


def _disentanglement_aggregates(ctx: StageContext, zs: pd.DataFrame) -> pd.DataFrame:
    from metrics.provenance import PROVENANCE_FIELDS, PROVENANCE_KEY

    d, done = ctx.config.disentanglement, ctx.done
    wide = zs.pivot(index="unit_key", columns="metric", values="value").loc[list(done["unit_key"])]
    prov = zs.iloc[0][list(PROVENANCE_FIELDS) + [PROVENANCE_KEY]]
    out = []
    keys = [k for k in GROUP_KEYS if k != "attribute"]  # the applied edit becomes the table row
    for key, g in done.groupby(keys, sort=True, dropna=False):
        w = wide.loc[list(g["unit_key"])]
        scores = scores_from_arrays(list(g["attribute"]), list(g[d.repeat_column]),
                                    {a: w[f"zeroshot:{a}:original"] for a in d.prompts},
                                    {a: w[f"zeroshot:{a}:edited"] for a in d.prompts})
        cells = disentanglement_matrix(scores, signed=d.signed)
        for c in cells.to_dict("records"):
            out.append({**dict(zip(keys, key)), "attribute": c["edit"], "measured_attribute": c["measured"],
                        "metric": "disentanglement_signed" if d.signed else "disentanglement", "value": c["mean"],
                        "std": c["std"], "n": c["n_images"], "n_repeats": c["n_repeats"], "reference_hash": "",
                        **prov.to_dict()})
    return pd.DataFrame(out)


@register_metrics(
    "disentanglement",
    MetricSpec("zeroshot:", "per_image", None, family=True, leaderboard=False),
    MetricSpec("disentanglement", "group", None, leaderboard=False),
    MetricSpec("disentanglement_signed", "group", None, leaderboard=False),
    order=30)
def disentanglement_stage(ctx: StageContext) -> StageOutput:
    """Zero-shot attribute scores of originals and edits, and the (edit, measured attribute) matrix."""
    from metrics.clip import ZeroShotAttributeScorer

    d = ctx.config.disentanglement
    if ctx.scorer is None or not d.enabled or not len(ctx.done):
        return StageOutput()
    zs = zeroshot_per_image(ctx, ZeroShotAttributeScorer(ctx.scorer, d.prompts, d.logit_scale))
    return StageOutput(zs, [_disentanglement_aggregates(ctx, zs)])
