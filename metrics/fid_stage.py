"""FID/KID per (method, model, suite, attribute, strength) group, from cached per-image features.

Features are cached by image content hash, and each group's statistics are built from its features
in unit_key order, so FID does not depend on the batch size or on which worker saw which image.
Workers may instead return `group_feature_stats` for their shard; `merge_group_stats` adds them
(exact up to float64 rounding of the sums) and `fid_rows` turns them into aggregate rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from harness.errors import ConfigError
from metrics._common import sha256_json
from metrics._images import ImageStore, list_reference_images, shape_batches
from metrics._stage import GROUP_KEYS, StageContext, StageOutput
from metrics.backbones import FeatureBackbone, ImageEncoder, build_backbone
from metrics.cache import FeatureCache
from metrics.config import MetricsConfig
from metrics.functional.fid import FeatureStats, features_to_stats, fid_from_stats, kid, merge_stats
from metrics.provenance import Provenance
from metrics.registry import MetricSpec, register_metrics

GroupKey = tuple
ORIGINALS_REFERENCE = "originals of each group (the unedited samples of the same units)"


def build_fid_backbone(config: MetricsConfig, clip_encoder: ImageEncoder | None = None) -> FeatureBackbone:
    f = config.fid
    return build_backbone(f.backbone, weights=f.weights, device=config.device, internal_dtype=f.internal_dtype,
                          seed=f.seed, feature_dim=f.feature_dim, clip_encoder=clip_encoder)


def extract_features(items: Iterable[tuple[str, str]], store: ImageStore, backbone: FeatureBackbone,
                     cache: FeatureCache, batch_size: int) -> None:
    """Run the backbone on every (sha, relpath) whose features are not cached yet; fills the cache."""
    todo = {sha: rel for sha, rel in items if sha not in cache}
    shas, rels = list(todo), list(todo.values())
    shapes = [store.info(r)[1] for r in rels]
    new: dict[str, np.ndarray] = {}
    for batch in shape_batches(range(len(rels)), shapes, batch_size):
        feats = backbone(store.load_batch([rels[i] for i in batch])).double().numpy()
        new.update({shas[i]: feats[j] for j, i in enumerate(batch)})
        if len(new) >= 4096:  # flush now and then so an interrupted stage keeps its work
            cache.put_many(new)
            new = {}
    cache.put_many(new)


@dataclass(frozen=True)
class GroupStats:
    """Mergeable per-group statistics of one shard: edited set, originals set, and the originals' hashes."""

    edited: FeatureStats
    originals: FeatureStats
    original_shas: tuple[str, ...]


def _group_features(done: pd.DataFrame, store: ImageStore, backbone: FeatureBackbone, cache: FeatureCache,
                    batch_size: int) -> dict[GroupKey, tuple[np.ndarray, np.ndarray, tuple[str, ...]]]:
    done = done.sort_values("unit_key", kind="stable")
    edited = [store.sha(p) for p in done["edited_path"]]
    originals = [store.sha(p) for p in done["original_path"]]
    extract_features(zip(edited + originals, list(done["edited_path"]) + list(done["original_path"])),
                     store, backbone, cache, batch_size)
    out = {}
    pos = {k: i for i, k in enumerate(done["unit_key"])}
    for key, g in done.groupby(list(GROUP_KEYS), sort=True, dropna=False):
        idx = [pos[u] for u in g["unit_key"]]
        out[key] = (np.stack([cache.get(edited[i]) for i in idx]), np.stack([cache.get(originals[i]) for i in idx]),
                    tuple(originals[i] for i in idx))
    return out


def group_feature_stats(rows: pd.DataFrame, run_dir: Path, config: MetricsConfig, backbone: FeatureBackbone,
                        store: ImageStore | None = None) -> dict[GroupKey, GroupStats]:
    """Statistics for the done rows of one shard (features are cached under run_dir/metrics)."""
    store = store or ImageStore(run_dir)
    cache = FeatureCache(Path(run_dir) / "metrics", Provenance.of("features", backbone).key)
    feats = _group_features(rows[rows["status"] == "done"], store, backbone, cache, config.fid.batch_size)
    return {k: GroupStats(features_to_stats(e), features_to_stats(o), shas) for k, (e, o, shas) in feats.items()}


def merge_group_stats(*parts: dict[GroupKey, GroupStats]) -> dict[GroupKey, GroupStats]:
    out: dict[GroupKey, GroupStats] = {}
    for part in parts:
        for k, s in part.items():
            if k in out:
                s = GroupStats(merge_stats(out[k].edited, s.edited), merge_stats(out[k].originals, s.originals),
                               out[k].original_shas + s.original_shas)
            out[k] = s
    return out


@dataclass(frozen=True)
class FolderReference:
    stats: FeatureStats
    features: np.ndarray
    reference_hash: str
    skipped: str = ""
    """Files left out (unreadable, or not the folder's common size), named in every FID row's warning."""
    size: tuple[int, int] = (0, 0)
    """(H, W) of the images used."""
    folder: str = ""

    @property
    def reference(self) -> str:
        """The provenance `reference` field: which set, by content hash."""
        return f"folder {self.reference_hash[:16]} ({self.stats.n} images)"

    def size_warning(self, sizes: Iterable[tuple[int, int]]) -> str:
        """Non-empty when the run's images are not at the folder's resolution (the backbone then resizes them
        differently, and FID measures the resize as much as the edit)."""
        other = sorted({s for s in sizes if s != self.size})
        if not other:
            return ""
        shown = ", ".join(f"{w}x{h}" for h, w in other)
        return (f"reference folder {self.folder} is {self.size[1]}x{self.size[0]} but the run's images are {shown}: "
                "FID compares different resolutions; resize the reference images to the run's resolution")


def folder_reference(reference_dir: Path, run_dir: Path, backbone: FeatureBackbone, batch_size: int) -> FolderReference:
    """Features and statistics of every image in reference_dir (cached by content hash in run_dir)."""
    store = ImageStore(reference_dir)
    rels, skipped = [], []
    for rel in list_reference_images(reference_dir):
        try:
            store.load_batch([rel])  # decodes fully: truncated files fail here, not mid-batch
            rels.append(rel)
        except Exception as exc:  # unreadable files are reported, and the rest of the folder is used
            skipped.append(f"{rel} (unreadable: {type(exc).__name__})")
    if rels:
        sizes = [store.info(r)[1] for r in rels]
        common = max(set(sizes), key=sizes.count)
        skipped += [f"{r} (size {sz[1]}x{sz[0]}, folder's common size {common[1]}x{common[0]})"
                    for r, sz in zip(rels, sizes) if sz != common]
        rels = [r for r, sz in zip(rels, sizes) if sz == common]
    if len(rels) < 2:
        raise ValueError(f"reference folder {reference_dir} holds {len(rels)} images; FID needs at least 2")
    cache = FeatureCache(Path(run_dir) / "metrics", Provenance.of("features", backbone).key)
    shas = [store.sha(r) for r in rels]
    extract_features(zip(shas, rels), store, backbone, cache, batch_size)
    feats = np.stack([cache.get(s) for s in shas])
    note = f"reference folder: skipped {len(skipped)} file(s): {'; '.join(skipped)}" if skipped else ""
    return FolderReference(features_to_stats(feats), feats, sha256_json(sorted(shas)), note, common,
                           str(reference_dir))


def fid_provenance(backbone: FeatureBackbone, folder: FolderReference | None = None) -> Provenance:
    return Provenance("fid", f"float64-stats eigvals-sqrt-trace; features: {backbone.implementation}",
                      backbone.library_version, backbone.name, backbone.weights_sha256, backbone.resize,
                      reference=folder.reference if folder else ORIGINALS_REFERENCE)


def fid_rows(stats: dict[GroupKey, GroupStats], backbone: FeatureBackbone, folder: FolderReference | None) -> pd.DataFrame:
    """One FID aggregate row per group: against the folder if given, else against the group's originals."""
    prov, out = fid_provenance(backbone, folder), []
    for key, s in sorted(stats.items(), key=lambda kv: str(kv[0])):
        ref = folder.stats if folder else s.originals
        ref_hash = folder.reference_hash if folder else sha256_json(sorted(s.original_shas))
        if s.edited.n < 2 or ref.n < 2:
            value, warning = float("nan"), f"FID needs n >= 2 (n={s.edited.n}, n_ref={ref.n})"
        else:
            res = fid_from_stats(s.edited, ref)
            value, warning = res.value, res.warning
        if folder is not None and folder.skipped:
            warning = "; ".join(w for w in (warning, folder.skipped) if w)
        out.append({**dict(zip(GROUP_KEYS, key)), "metric": "fid", "value": value, "n": s.edited.n,
                    "n_ref": ref.n, "warning": warning, "reference_hash": ref_hash, **prov.columns()})
    return pd.DataFrame(out)


def fid_aggregates(done: pd.DataFrame, run_dir: Path, config: MetricsConfig, reference_dir: Path | None,
                   backbone: FeatureBackbone, store: ImageStore) -> pd.DataFrame:
    """FID (and KID when enabled) rows for every group of done rows; a reference folder at another
    resolution than the group's images is named in the group's warning."""
    f = config.fid
    if (f.reference == "folder") != (reference_dir is not None):
        raise ConfigError("metrics.fid.reference", f.reference, ["originals", "folder"],
                          "pass reference_dir exactly when reference is 'folder'")
    folder = folder_reference(Path(reference_dir), run_dir, backbone, f.batch_size) if reference_dir else None
    cache = FeatureCache(Path(run_dir) / "metrics", Provenance.of("features", backbone).key)
    feats = _group_features(done, store, backbone, cache, f.batch_size)
    stats = {k: GroupStats(features_to_stats(e), features_to_stats(o), shas) for k, (e, o, shas) in feats.items()}
    frame = fid_rows(stats, backbone, folder)
    size_warning = {k: "" for k in stats}
    if folder is not None:
        size_warning = {k: folder.size_warning({store.info(p)[1] for p in g["edited_path"]})
                        for k, g in done.groupby(list(GROUP_KEYS), sort=True, dropna=False)}
        frame["warning"] = ["; ".join(w for w in (r["warning"], size_warning[k]) if w)
                            for k, r in zip(sorted(stats, key=str), frame.to_dict("records"))]
    if not f.kid or frame.empty:
        return frame
    estimator = "all cross pairs" if folder else "paired terms excluded"
    # The subset size actually used depends on the group's n: it goes in the warning, not in the provenance,
    # so groups of different sizes still share one KID column.
    kid_prov = fid_provenance(backbone, folder).replace(
        metric="kid", implementation=f"poly3 unbiased MMD ({estimator}), {f.kid_subsets} subsets of "
                                     f"{f.kid_subset_size}, seed 0; features: {backbone.implementation}")
    kid_rows = []
    for (key, (e, o, _)), fid_row in zip(sorted(feats.items(), key=lambda kv: str(kv[0])), frame.to_dict("records")):
        # Against the originals, edit i is paired with original i: the paired estimator drops those terms.
        ref, paired = (folder.features, False) if folder else (o, True)
        size = min(f.kid_subset_size, len(e), len(ref))
        warn = ""
        if size < f.kid_subset_size:
            whole = size == len(e) == len(ref)
            warn = (f"n={len(e)}, n_ref={len(ref)} < kid_subset_size {f.kid_subset_size}: "
                    + ("one estimate on all images, no subset std" if whole else f"subsets of {size}"))
        mean, std = kid(e, ref, f.kid_subsets, size, paired=paired) if size >= 2 else (float("nan"), float("nan"))
        kid_rows.append({**fid_row, "metric": "kid", "value": mean, "std": std,
                         "warning": "; ".join(w for w in (warn, size_warning[key]) if w), **kid_prov.columns()})
    return pd.concat([frame, pd.DataFrame(kid_rows)], ignore_index=True)


@register_metrics("fid", MetricSpec("fid", "group", "min"), MetricSpec("kid", "group", "min"), order=60)
def fid_stage(ctx: StageContext) -> StageOutput:
    """Distribution metrics per group, from cached features."""
    if ctx.fid_backbone is None or not len(ctx.done):
        return StageOutput()
    return StageOutput(None, [fid_aggregates(ctx.done, ctx.run_dir, ctx.config, ctx.reference_dir, ctx.fid_backbone,
                                             ctx.store)])
