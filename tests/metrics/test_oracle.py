"""Oracle metrics on hand-built edits whose true factors are known."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from PIL import Image

from harness.world import Scene, render
from metrics._images import ImageStore
from metrics.oracle import oracle_per_image

BASE = Scene(shape="circle", fg="red", bg="blue", size="small", x="center", y="middle")
CASES = {  # unit -> edited scene (None: a blank image, no object)
    "ok": dataclasses.replace(BASE, size="large"),
    "leaky": dataclasses.replace(BASE, size="large", fg="green", x="left"),
    "missed": dataclasses.replace(BASE, fg="yellow"),
    "blank": None,
}


def test_oracle_values_match_the_known_edits(tmp_path) -> None:
    rows = []
    Image.fromarray(render(BASE)).save(tmp_path / "orig.png")
    for unit, scene in CASES.items():
        img = render(scene) if scene is not None else np.full((32, 32, 3), 255, np.uint8)
        Image.fromarray(img).save(tmp_path / f"{unit}.png")
        rows.append(dict(unit_key=unit, run_id="r", method="m", method_version=1, model="w", suite="world",
                         item_id=unit, attribute="large", strength=1.0, seed=0, original_path="orig.png",
                         edited_path=f"{unit}.png"))
    out = oracle_per_image(pd.DataFrame(rows), ImageStore(tmp_path), {"large": ("size", "large")})
    v = out.pivot(index="unit_key", columns="metric", values="value")
    assert v.loc["ok", "oracle_success"] == 1 and v.loc["ok", "oracle_preservation"] == 1
    assert v.loc["leaky", "oracle_success"] == 1 and np.isclose(v.loc["leaky", "oracle_preservation"], 3 / 5)
    assert v.loc["leaky", "oracle_changed:fg"] == 1 and v.loc["leaky", "oracle_changed:x"] == 1
    assert v.loc["leaky", "oracle_changed:shape"] == 0
    assert v.loc["missed", "oracle_success"] == 0 and np.isclose(v.loc["missed", "oracle_preservation"], 4 / 5)
    assert v.loc["blank", "oracle_valid"] == 0 and v.loc["blank", "oracle_success"] == 0


# -- flip rate: a no-op must score 0, however often the original already had the target -----------------

SMALL, LARGE = BASE, dataclasses.replace(BASE, size="large")


def _oracle_rows(tmp_path, pairs: dict[str, tuple], seeds: dict[str, int] | None = None) -> pd.DataFrame:
    """Per-image oracle values for units (unit -> (original scene, edited scene or None = blank)), target large."""
    rows = []
    for unit, (orig, edit) in pairs.items():
        for role, scene in (("orig", orig), ("edit", edit)):
            img = render(scene) if scene is not None else np.full((32, 32, 3), 255, np.uint8)
            Image.fromarray(img).save(tmp_path / f"{unit}.{role}.png")
        rows.append(dict(unit_key=unit, run_id="r", method="m", method_version=1, model="w", suite="world",
                         item_id=unit, attribute="large", strength=1.0, seed=(seeds or {}).get(unit, 0),
                         original_path=f"{unit}.orig.png", edited_path=f"{unit}.edit.png"))
    return oracle_per_image(pd.DataFrame(rows), ImageStore(tmp_path), {"large": ("size", "large")})


def test_flip_counts_only_originals_not_already_at_the_target(tmp_path) -> None:
    cases = {
        "flipped": (SMALL, LARGE),                # eligible, changed to the target
        "unmoved": (SMALL, SMALL),                # eligible, no change
        "already": (LARGE, LARGE),                # original already large: success 1 but not a flip
        "broken": (SMALL, None),                  # eligible, edit unreadable: a failed flip
        "bad-original": (None, LARGE),            # original unreadable: neither base rate nor flip
    }
    v = _oracle_rows(tmp_path, cases).pivot(index="unit_key", columns="metric", values="value")
    assert v.loc["flipped", "oracle_flip"] == 1 and v.loc["flipped", "oracle_base_rate"] == 0
    assert v.loc["unmoved", "oracle_flip"] == 0 and v.loc["unmoved", "oracle_success"] == 0
    assert v.loc["already", "oracle_success"] == 1 and v.loc["already", "oracle_base_rate"] == 1
    assert np.isnan(v.loc["already", "oracle_flip"])
    assert v.loc["broken", "oracle_flip"] == 0
    assert np.isnan(v.loc["bad-original", "oracle_flip"]) and np.isnan(v.loc["bad-original", "oracle_base_rate"])
    assert v.loc["bad-original", "oracle_success"] == 1  # success reads the edited image only


def test_preservation_counts_only_readable_originals(tmp_path) -> None:
    """An unreadable original has nothing to preserve: preservation and changed:<factor> are NaN there (not 0 /
    1, which charged the model's bad samples to the edit); an unreadable edit of a readable original is the
    method's failure (preservation 0, every factor changed)."""
    cases = {
        "no-op": (SMALL, SMALL),
        "broken": (SMALL, None),
        "bad-original": (None, LARGE),
        "leaky": (SMALL, dataclasses.replace(LARGE, fg="green")),
    }
    v = _oracle_rows(tmp_path, cases).pivot(index="unit_key", columns="metric", values="value")
    changed = [c for c in v.columns if c.startswith("oracle_changed:")]
    assert len(changed) == 6
    assert v.loc["no-op", "oracle_preservation"] == 1 and (v.loc["no-op", changed] == 0).all()
    assert v.loc["broken", "oracle_preservation"] == 0 and (v.loc["broken", changed] == 1).all()
    assert np.isnan(v.loc["bad-original", "oracle_preservation"]) and v.loc["bad-original", changed].isna().all()
    assert np.isclose(v.loc["leaky", "oracle_preservation"], 4 / 5)
    assert v.loc["leaky", "oracle_changed:fg"] == 1 and v.loc["leaky", "oracle_changed:size"] == 1
    assert v.loc["leaky", "oracle_changed:shape"] == 0


def test_flip_tells_a_no_op_from_a_working_edit(tmp_path) -> None:
    """Four originals, two already large. A no-op 'succeeds' on half of them but flips none; an edit that
    makes every scene large flips all eligible ones. oracle_success cannot tell the two apart as well."""
    from metrics._stage import mean_aggregates

    originals = {"a": SMALL, "b": LARGE, "c": SMALL, "d": LARGE}
    (tmp_path / "noop").mkdir()
    (tmp_path / "works").mkdir()
    noop = _oracle_rows(tmp_path / "noop", {u: (o, o) for u, o in originals.items()})
    works = _oracle_rows(tmp_path / "works", {u: (o, LARGE) for u, o in originals.items()})
    for frame, flip, success in ((noop, 0.0, 0.5), (works, 1.0, 1.0)):
        per = frame.assign(**{c: "x" for c in ("implementation", "library_version", "backbone", "weights_sha256",
                                                 "resize", "metric_version")})
        agg = {m: mean_aggregates(per, m).iloc[0] for m in ("oracle_flip", "oracle_success",
                                                                           "oracle_base_rate")}
        assert agg["oracle_flip"]["value"] == flip and agg["oracle_flip"]["n"] == 2  # only the two small originals
        assert agg["oracle_success"]["value"] == success and agg["oracle_success"]["n"] == 4
        assert agg["oracle_base_rate"]["value"] == 0.5


def test_flip_mean_over_seeds_skips_ineligible_units(tmp_path) -> None:
    """Leaderboard cell = mean over seeds of each seed's mean over its eligible units; a seed with no
    eligible unit drops out (NaN), it is not counted as 0."""
    from harness.reports.tables import _seed_cells

    cases = {"s0-flip": (SMALL, LARGE), "s0-miss": (SMALL, SMALL), "s0-already": (LARGE, LARGE),
             "s1-flip": (SMALL, LARGE), "s2-already": (LARGE, LARGE)}
    seeds = {u: int(u[1]) for u in cases}
    per = _oracle_rows(tmp_path, cases, seeds)
    flips = per[per["metric"] == "oracle_flip"]
    cell = _seed_cells(flips, ["method", "model", "suite"], "value", "oracle_flip")[0]
    # seed 0: flips (1, 0) -> 0.5; seed 1: 1.0; seed 2: no eligible unit -> left out. Mean of (0.5, 1.0).
    assert cell["value"] == 0.75 and np.isclose(cell["std"], np.std([0.5, 1.0], ddof=1))
