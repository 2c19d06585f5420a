"""Synthetic runs shared by the report tests (hand-written numbers; see each fixture for the expected values)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.reports.synthetic import (
    CLIP_PROV,
    FID_PROV,
    LPIPS_PROV,
    ZS_PROV,
    aggregate,
    make_run,
    per_image,
    unit,
)

HAND_LPIPS = {"alpha": {0: [0.1, 0.3], 1: [0.4, 0.6]}, "beta": {0: [0.05, 0.05], 1: [0.15, 0.15]}}
HAND_SECONDS = {"alpha": {0: [1.0, 3.0], 1: [2.0, 2.0]}, "beta": {0: [4.0, 4.0], 1: [4.0, 4.0]}}
HAND_FID = {"alpha": {"smile": 10.0, "age": 20.0}, "beta": {"smile": 30.0, "age": 50.0}}
HAND_CLIP = {"alpha": 20.0, "beta": 30.0}


@pytest.fixture
def hand_run(tmp_path: Path) -> Path:
    """Methods alpha and beta on model m, suite s; items smile and age; seeds 0 and 1; one failed beta unit.

    alpha: lpips per seed (0.1+0.3)/2 = 0.2 and 0.5 -> 0.35 ± 0.2121; edit s 2 and 2 -> 2 ± 0; fid 15 ± 7.071
    beta:  lpips 0.05 and 0.15 -> 0.1 ± 0.07071; edit s 4 ± 0; fid 40 ± 14.14; clip 30 (alpha 20)
    """
    rows, pim, agg = [], [], []
    for method in ("alpha", "beta"):
        for seed in (0, 1):
            for j, attr in enumerate(("smile", "age")):
                r = unit(method, attr, seed, edit_seconds=HAND_SECONDS[method][seed][j])
                rows.append(r)
                pim.append(per_image(r, "lpips", HAND_LPIPS[method][seed][j]))
                pim.append(per_image(r, "clip_score", HAND_CLIP[method], CLIP_PROV))
                pim.append(per_image(r, "zeroshot:smile:edited", 0.5, ZS_PROV))  # raw scores: not a column
        for attr, v in HAND_FID[method].items():
            agg.append(aggregate(method, attr, "fid", v))
        agg.append(aggregate(method, None, "edit_seconds_mean", 9.0, strength=None, prov={
            "implementation": "wall-clock", "backbone": ""}))
    rows.append(unit("beta", "smile", 2, status="failed", edit_seconds=float("nan")))
    return make_run(tmp_path / "hand", rows, pim, agg)


SVD_ATTRS = ("female", "male", "old", "young")
SVD_OURS = {"fid": 20.0, "clip_score": 25.0, "lpips": 0.25}


def svd_run(root: Path, drop_rows: tuple = (), drop_aggs: tuple = ()) -> Path:
    """sd, park, avi x female/male/old/young x seeds 0, 1 on model m, suite svd_paper; every fid = 20,
    clip_score = 25, lpips = 0.25; edit seconds 2 (sd), 3 (park), 4 (avi). `drop_rows` = (method, attr)
    pairs left out; `drop_aggs` = (method, attr, metric) aggregates left out."""
    rows, agg = [], []
    seconds = {"sd": 2.0, "park": 3.0, "avi": 4.0}
    for method in ("sd", "park", "avi"):
        for attr in SVD_ATTRS:
            if (method, attr) in drop_rows:
                continue
            for seed in (0, 1):
                rows.append(unit(method, attr, seed, suite="svd_paper", edit_seconds=seconds[method]))
            for metric, prov in (("fid", FID_PROV), ("clip_score", CLIP_PROV), ("lpips", LPIPS_PROV)):
                if (method, attr, metric) not in drop_aggs:
                    agg.append(aggregate(method, attr, metric, SVD_OURS[metric], suite="svd_paper", prov=prov))
    return make_run(root, rows, (), agg, config={"sampler": {"num_steps": 50, "eta": 0.0, "guidance_scale": 7.5}})


HSPACE_ATTRS = ("smile", "glasses", "age", "gender", "hat")


def hspace_value(variant: str, edit: str, measured: str) -> float:
    """Our synthetic cell: 0.5 on the diagonal, 0.1 (original) or 0.01 (disentangled) off it."""
    return 0.5 if edit == measured else (0.1 if variant == "original" else 0.01)


def oracle_changed(variant: str, edit: str, factor: str) -> float:
    """Planted oracle effects: the diagonal 0.9 (original) / 0.8 (projected), off-diagonal 0.4 / 0.2."""
    if edit == factor:
        return 0.9 if variant == "original" else 0.8
    return 0.4 if variant == "original" else 0.2


def hspace_run(root: Path, disentangled: bool = True, oracle: bool = False,
               variants: list[tuple[str, str | None, float]] | None = None) -> Path:
    """A supervised run; `variants`: (label, disentangle_from, scale option) per label (default: `supervised`
    and, with `disentangled`, `supervised-dis`, both at scale 1)."""
    rows, agg = [], []
    if variants is None:
        variants = [("supervised", None, 1.0)] + ([("supervised-dis", "all_others", 1.0)] if disentangled else [])
    for label, dis, scale in variants:
        variant = "original" if dis is None else "disentangled"
        for attr in HSPACE_ATTRS:
            for seed in (0, 1):
                rows.append(unit(label, attr, seed, model="ddpm-celebahq-256", suite="hspace_paper",
                                 method_name="supervised", options={"disentangle_from": dis, "scale": scale}))
            for measured in HSPACE_ATTRS:
                agg.append(aggregate(label, attr, "disentanglement", hspace_value(variant, attr, measured),
                                     model="ddpm-celebahq-256", suite="hspace_paper", std=0.01, n=200,
                                     prov=ZS_PROV, measured_attribute=measured, n_repeats=2))
                if oracle:  # a world run: the exact oracle's matrix, factors named like the attributes
                    agg.append(aggregate(label, attr, f"oracle_changed:{measured}",
                                         oracle_changed(variant, attr, measured), model="ddpm-celebahq-256",
                                         suite="hspace_paper", n=2))
    return make_run(root, rows, (), agg, config={"sampler": {"num_steps": 50, "eta": 1.0, "guidance_scale": 1.0}})
