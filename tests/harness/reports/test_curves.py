"""Strength–preservation trade-off: operating point and frontier area from stored oracle values, leaderboard
columns and the HTML plots, on synthetic runs (hand-chosen numbers, expected values worked out by hand)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.reports import build_leaderboard, load_run
from harness.reports.curves import curve_points, frontier_auc, operating_point
from harness.reports.html import write_html_report
from tests.harness.reports.synthetic import make_run, per_image, unit

ORACLE = {"implementation": "oracle", "library_version": "1", "backbone": "world-oracle", "weights_sha256": "",
          "resize": "none", "metric_version": 1}
NAN = float("nan")
# method -> strength -> (flip of the eligible units, preservation of every unit)
SWEEPS = {
    "good": {0.5: (0.2, 1.0), 1.0: (0.6, 0.95), 2.0: (0.9, 0.7)},
    "noop": {0.5: (0.0, 1.0), 1.0: (0.0, 1.0), 2.0: (0.0, 1.0)},
    "harsh": {1.0: (1.0, 0.5)},
}


def sweep_run(root: Path) -> Path:
    """Per method and strength: seeds 0 and 1 eligible (flip as above), seed 2 already at the target (flip NaN,
    which must not pull the flip rate down); every unit has the preservation above."""
    rows, pim = [], []
    for method, points in SWEEPS.items():
        for strength, (flip, pres) in points.items():
            for seed in (0, 1, 2):
                r = unit(method, "large", seed, strength)
                rows.append(r)
                pim += [per_image(r, "oracle_flip", flip if seed < 2 else NAN, ORACLE),
                        per_image(r, "oracle_preservation", pres, ORACLE),
                        per_image(r, "oracle_success", 1.0 if seed == 2 else flip, ORACLE)]
    return make_run(root, rows, pim)


def test_frontier_area_matches_a_numerical_integral() -> None:
    pts = pd.DataFrame({"strength": [0.5, 1.0, 2.0, 3.0], "flip": [0.2, 0.6, 0.5, 0.9],
                        "preservation": [1.0, 0.95, 0.8, 0.7]})
    q = (np.arange(200_000) + 0.5) / 200_000  # midpoint rule for ∫_0^1 max{flip : preservation >= q} dq
    best = np.array([pts.loc[pts["preservation"] >= v, "flip"].max() if (pts["preservation"] >= v).any() else 0.0
                     for v in q[::100]])
    assert frontier_auc(pts) == pytest.approx(float(best.mean()), abs=1e-3)
    # by hand: 0.2·0.05 + 0.6·0.25 + 0.9·0.7 (the dominated point at 0.8 changes nothing)
    assert frontier_auc(pts) == pytest.approx(0.01 + 0.15 + 0.63)
    assert operating_point(pts) == (0.6, 1.0)
    assert np.isnan(operating_point(pts, floor=1.01)[0])


def test_curve_points_pool_units_and_skip_ineligible(tmp_path: Path) -> None:
    run = load_run(sweep_run(tmp_path / "r"))
    pts = curve_points(run.per_image, ["method"]).set_index(["method", "strength"])
    assert pts.loc[("good", 1.0), "flip"] == pytest.approx(0.6)          # NaN unit left out, not counted as 0
    assert pts.loc[("good", 1.0), "n_eligible"] == 2 and pts.loc[("good", 1.0), "n"] == 3
    assert pts.loc[("good", 2.0), "preservation"] == pytest.approx(0.7)


def test_leaderboard_operating_point_and_area(tmp_path: Path) -> None:
    board = build_leaderboard([load_run(sweep_run(tmp_path / "r"))])
    f = board.to_frame().set_index("method")
    names = [c.name for c in board.columns]
    assert names[-3:] == ["flip_at_pres0.9", "strength_at_pres0.9", "flip_pres_auc"]
    assert f.loc["good", "flip_at_pres0.9"] == pytest.approx(0.6) and f.loc["good", "strength_at_pres0.9"] == 1.0
    assert f.loc["good", "flip_pres_auc"] == pytest.approx(0.79)
    # a no-op: preservation 1 everywhere but nothing flips -> 0 (its success would read 1/3 from seed 2)
    assert f.loc["noop", "flip_at_pres0.9"] == 0 and f.loc["noop", "strength_at_pres0.9"] == 0.5
    assert f.loc["noop", "flip_pres_auc"] == 0
    assert f.loc["noop", "oracle_success"] == pytest.approx(1 / 3)
    # never preserves 0.9: no operating point; area = 1.0 · 0.5
    assert np.isnan(f.loc["harsh", "flip_at_pres0.9"]) and f.loc["harsh", "flip_pres_auc"] == pytest.approx(0.5)
    best = {f.index[i] for i in board.best["flip_pres_auc"]}
    assert best == {"good"}
    # The notes name each column's provenance; the derived trade-off columns have none, and used to get
    # lines like "flip_pres_auc: ; backbone -". Every provenance line must name an implementation.
    for name in names[-3:]:
        assert not [n for n in board.notes if n.startswith(f"{name}: ;")], board.notes
    assert any(n.startswith("oracle_flip: oracle; backbone world-oracle") for n in board.notes), board.notes
    assert not [n for n in board.notes if ": ; backbone" in n]


def test_html_plots_flip_against_preservation_per_attribute(tmp_path: Path) -> None:
    text = write_html_report(sweep_run(tmp_path / "r")).read_text()
    assert "flip vs preservation: m · s · all attributes" in text
    assert "flip vs preservation: m · s · attribute large" in text
    panel = text.split("<title>flip vs preservation: m · s · all attributes</title>")[1].split("</svg>")[0]
    assert panel.count("<polyline") == 2  # good and noop have 3 points; harsh one point, no line
    assert "good: 0.95 → 0.6 (strength 1, 2 eligible)" in panel
    assert "flip_pres_auc" in text
