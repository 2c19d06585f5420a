"""The metrics stage: per-image CLIP score / LPIPS / zero-shot attribute scores, and per-group aggregates.

Images are read from the PNGs the run wrote (never from in-memory floats). Per-image values are cached
in run_dir/metrics/ keyed by unit_key, metric, provenance and a hash of the inputs, so a second call on
the same rows runs no model at all. Every output row carries its provenance columns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from harness.errors import ConfigError
from metrics._common import sha256_json
from metrics._images import ImageStore, shape_batches
from metrics.cache import ValueCache
from metrics.clip import CLIPScorer, ZeroShotAttributeScorer, aggregate_clip_score, load_clip_scorer
from metrics.config import MetricsConfig
from metrics.disentanglement import disentanglement_matrix, scores_from_arrays
from metrics.fid_stage import GROUP_KEYS, build_fid_backbone, fid_aggregates
from metrics.lpips_metric import ClipFeatureLPIPS, LPIPSMetric, build_lpips
from metrics.provenance import Provenance
from metrics.runtime import summarise_runtime

ROW_COLUMNS = ("unit_key", "run_id", "method", "method_version", "model", "suite", "item_id", "attribute", "prompt",
               "target_prompt", "strength", "seed", "status", "original_path", "edited_path", "edit_seconds",
               "prepare_seconds", "device")
META_COLUMNS = ("unit_key", "run_id", "method", "method_version", "model", "suite", "item_id", "attribute",
                "strength", "seed")
Compute = Callable[[list[int]], dict[str, np.ndarray]]


def _check_rows(rows: pd.DataFrame) -> None:
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"metrics rows lack columns {missing}")
    dup = rows["unit_key"][rows["unit_key"].duplicated()]
    if len(dup):
        raise ValueError(f"unit_key must be unique, repeated: {sorted(dup.unique())[:5]}")


def _cached_values(done: pd.DataFrame, metrics: Sequence[str], prov: Provenance, input_keys: Sequence[str],
                   shapes: Sequence[object], compute: Compute, batch_size: int,
                   cache: ValueCache) -> dict[str, np.ndarray]:
    """Per-unit values for `metrics` (aligned with done), computing only cache misses, in equal-shape batches."""
    units = list(done["unit_key"])
    out = {m: np.full(len(units), np.nan) for m in metrics}
    missing = []
    for i, (u, k) in enumerate(zip(units, input_keys)):
        hits = [cache.get((u, m, prov.key, k)) for m in metrics]
        if any(h is None for h in hits):
            missing.append(i)
        for m, h in zip(metrics, hits):
            out[m][i] = np.nan if h is None else h
    new = {}
    for batch in shape_batches(missing, shapes, batch_size):
        res = compute(batch)
        for m in metrics:
            for j, i in enumerate(batch):
                out[m][i] = new[(units[i], m, prov.key, input_keys[i])] = float(res[m][j])
        if len(new) >= 4096:  # flush now and then so an interrupted stage keeps its work
            cache.put_many(new)
            new = {}
    cache.put_many(new)
    return out


def _per_image_frame(done: pd.DataFrame, values: dict[str, np.ndarray], prov: Provenance) -> pd.DataFrame:
    meta = done[list(META_COLUMNS)].reset_index(drop=True)
    return pd.concat([meta.assign(metric=m, value=v, **prov.columns()) for m, v in values.items()], ignore_index=True)


def _text_for(done: pd.DataFrame) -> list[str]:
    """CLIP text: the target prompt, or the prompt when the target is empty."""
    return [t if isinstance(t, str) and t.strip() else p for t, p in zip(done["target_prompt"], done["prompt"])]


def clip_per_image(done: pd.DataFrame, store: ImageStore, scorer: CLIPScorer, batch_size: int,
                   cache: ValueCache) -> pd.DataFrame:
    texts, rels = _text_for(done), list(done["edited_path"])
    keys = [sha256_json([store.sha(r), t]) for r, t in zip(rels, texts)]
    shapes = [store.info(r)[1] for r in rels]

    def compute(b: list[int]) -> dict[str, np.ndarray]:
        return {"clip_score": scorer.clip_scores(store.load_batch([rels[i] for i in b]), [texts[i] for i in b]).numpy()}

    prov = Provenance.of("clip_score", scorer)
    return _per_image_frame(done, _cached_values(done, ["clip_score"], prov, keys, shapes, compute, batch_size, cache),
                            prov)


def lpips_per_image(done: pd.DataFrame, store: ImageStore, metric: LPIPSMetric | ClipFeatureLPIPS, batch_size: int,
                    cache: ValueCache) -> pd.DataFrame:
    ed, og = list(done["edited_path"]), list(done["original_path"])
    keys = [sha256_json([store.sha(e), store.sha(o)]) for e, o in zip(ed, og)]
    shapes = [(store.info(e)[1], store.info(o)[1]) for e, o in zip(ed, og)]

    def compute(b: list[int]) -> dict[str, np.ndarray]:
        return {"lpips": metric(store.load_batch([ed[i] for i in b]), store.load_batch([og[i] for i in b])).numpy()}

    prov = Provenance.of("lpips", metric)
    return _per_image_frame(done, _cached_values(done, ["lpips"], prov, keys, shapes, compute, batch_size, cache), prov)


def zeroshot_per_image(done: pd.DataFrame, store: ImageStore, scorer: ZeroShotAttributeScorer, batch_size: int,
                       cache: ValueCache) -> pd.DataFrame:
    """s_a for every configured attribute on the original and the edited image of each unit."""
    ed, og = list(done["edited_path"]), list(done["original_path"])
    keys = [sha256_json([store.sha(o), store.sha(e)]) for e, o in zip(ed, og)]
    shapes = [(store.info(e)[1], store.info(o)[1]) for e, o in zip(ed, og)]
    names = [f"zeroshot:{a}:{role}" for a in scorer.prompts for role in ("original", "edited")]

    def compute(b: list[int]) -> dict[str, np.ndarray]:
        so, se = scorer(store.load_batch([og[i] for i in b])), scorer(store.load_batch([ed[i] for i in b]))
        return {f"zeroshot:{a}:{r}": s[a].numpy()
                for a in scorer.prompts for r, s in (("original", so), ("edited", se))}

    base = Provenance.of("zeroshot", scorer.scorer)
    impl = (f"{base.implementation} zero-shot logit_scale={scorer.logit_scale} "
            f"prompts={sha256_json(scorer.prompts)[:12]}")
    prov = Provenance("zeroshot", impl, base.library_version, base.backbone, base.weights_sha256, base.resize)
    return _per_image_frame(done, _cached_values(done, names, prov, keys, shapes, compute, batch_size, cache), prov)


def _failed_counts(rows: pd.DataFrame) -> pd.DataFrame:
    return (rows.assign(n_failed=rows["status"] != "done").groupby(list(GROUP_KEYS), dropna=False)["n_failed"]
            .sum().reset_index())


def _mean_aggregates(per_image: pd.DataFrame, metric: str, clamp: bool) -> pd.DataFrame:
    sub = per_image[per_image["metric"] == metric]
    prov_cols = ["implementation", "library_version", "backbone", "weights_sha256", "resize", "metric_version"]
    out = []
    for key, g in sub.groupby(list(GROUP_KEYS) + prov_cols, sort=True, dropna=False):
        v = g["value"].to_numpy(np.float64)
        # NaN marks a unit the metric does not apply to (oracle_flip when the original already had the
        # target value): the group's value is the mean over the other units, n counts only them.
        v = v[~np.isnan(v)]
        value = (aggregate_clip_score(v) if clamp else float(v.mean())) if len(v) else np.nan
        out.append({**dict(zip(list(GROUP_KEYS) + prov_cols, key)), "metric": metric, "value": value,
                    "std": float(v.std(ddof=1)) if len(v) > 1 else np.nan, "n": len(v), "reference_hash": ""})
    return pd.DataFrame(out)


def _disentanglement_aggregates(done: pd.DataFrame, zs: pd.DataFrame, config: MetricsConfig) -> pd.DataFrame:
    d = config.disentanglement
    wide = zs.pivot(index="unit_key", columns="metric", values="value").loc[list(done["unit_key"])]
    prov = zs.iloc[0][["implementation", "library_version", "backbone", "weights_sha256", "resize", "metric_version"]]
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


def _runtime_aggregates(rows: pd.DataFrame) -> pd.DataFrame:
    rt = summarise_runtime(rows, by=("method", "model", "suite", "device"))
    out = []
    for r in rt.to_dict("records"):
        for m in ("edit_seconds_mean", "edit_seconds_median", "prepare_seconds_total", "seconds_per_image_amortised"):
            out.append({k: r[k] for k in ("method", "model", "suite", "device")} | {
                "metric": m, "value": r[m], "n": r["n_done"], "n_failed": r["n_failed"],
                "implementation": "wall-clock (harness timers)", "library_version": "", "backbone": "",
                "weights_sha256": "", "resize": "", "metric_version": 1, "reference_hash": ""})
    return pd.DataFrame(out)


def compute_metrics(rows: pd.DataFrame, run_dir: Path, config: MetricsConfig,
                    reference_dir: Path | None = None,
                    oracle_targets: dict[str, tuple[str, str]] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-image values (long: one row per unit and metric) and aggregates (one row per group and metric).

    Call it on all rows of a run; on a subset (one worker's shard) it fills the caches and returns
    that subset's groups only. FID groups are (method, model, suite, attribute, strength).
    """
    _check_rows(rows)
    if config.fid.enabled and (config.fid.reference == "folder") != (reference_dir is not None):
        raise ConfigError("metrics.fid.reference", config.fid.reference, ["originals", "folder"],
                          "pass reference_dir exactly when reference is 'folder'")
    run_dir = Path(run_dir)
    done = rows[rows["status"] == "done"].sort_values("unit_key", kind="stable").reset_index(drop=True)
    store, cache = ImageStore(run_dir), ValueCache(run_dir / "metrics")

    # 1. Build every enabled component first: bad config or missing weights fail before any model runs.
    c, lp, d = config.clip, config.lpips, config.disentanglement
    scorer = load_clip_scorer(c.backend, c.model, c.pretrained, c.model_config, c.random_weights, config.device,
                              c.seed) if config.needs_clip_model else None
    lpips_metric = build_lpips(lp, scorer, config.device) if lp.enabled else None
    backbone = build_fid_backbone(config, scorer) if config.fid.enabled else None

    # 2. Per-image values (cached), then their group aggregates.
    per_image, aggs = [], []
    if len(done) and scorer is not None and c.enabled:
        per_image.append(clip_per_image(done, store, scorer, c.batch_size, cache))
        aggs.append(_mean_aggregates(per_image[-1], "clip_score", clamp=True))
    if len(done) and lpips_metric is not None:
        per_image.append(lpips_per_image(done, store, lpips_metric, lp.batch_size, cache))
        aggs.append(_mean_aggregates(per_image[-1], "lpips", clamp=False))
    if len(done) and scorer is not None and d.enabled:
        zs = zeroshot_per_image(done, store, ZeroShotAttributeScorer(scorer, d.prompts, d.logit_scale), d.batch_size,
                                cache)
        per_image.append(zs)
        aggs.append(_disentanglement_aggregates(done, zs, config))

    if len(done) and config.oracle.enabled and oracle_targets:
        from metrics.oracle import oracle_per_image

        per_image.append(oracle_per_image(done, store, oracle_targets))
        for metric in per_image[-1]["metric"].unique():
            aggs.append(_mean_aggregates(per_image[-1], metric, clamp=False))
    if len(done) and "input_path" in done and done["input_path"].notna().any():
        from metrics.reconstruction import reconstruction_per_image

        per_image.append(reconstruction_per_image(done, store))
        aggs.append(_mean_aggregates(per_image[-1], "reconstruction_psnr", clamp=False))

    # 3. Distribution metrics per group, from cached features.
    if len(done) and backbone is not None:
        aggs.append(fid_aggregates(done, run_dir, config, reference_dir, backbone, store))

    aggs = [a for a in aggs if not a.empty]
    agg = pd.concat(aggs, ignore_index=True) if aggs else pd.DataFrame(columns=list(GROUP_KEYS) + ["metric", "value"])
    agg = agg.drop(columns=["n_failed"], errors="ignore").merge(_failed_counts(rows), on=list(GROUP_KEYS), how="left")
    agg = pd.concat([agg, _runtime_aggregates(rows)], ignore_index=True)
    per = pd.concat(per_image, ignore_index=True) if per_image else \
        pd.DataFrame(columns=list(META_COLUMNS) + ["metric", "value"])
    return per, agg
