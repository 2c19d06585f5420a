"""Leaderboard numbers against hand-computed values, best-value marking, provenance splits, sorting, formats."""
from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.reports import build_leaderboard, load_run, load_runs, render_leaderboard, write_leaderboard
from harness.reports.render import to_markdown
from tests.harness.reports.synthetic import FID_PROV, LPIPS_PROV, aggregate, make_run, per_image, unit


def row(board, method: str) -> pd.Series:
    f = board.to_frame()
    return f[f["method"] == method].iloc[0]


def test_hand_computed_values(hand_run: Path) -> None:
    board = build_leaderboard([load_run(hand_run)])
    a, b = row(board, "alpha"), row(board, "beta")
    assert (a["units"], a["done"], a["failed"]) == (4, 4, 0)
    assert (b["units"], b["done"], b["failed"]) == (5, 4, 1)
    assert a["lpips"] == pytest.approx(0.35) and a["lpips_std"] == pytest.approx(math.sqrt(2 * 0.15 ** 2))
    assert b["lpips"] == pytest.approx(0.1) and b["lpips_std"] == pytest.approx(math.sqrt(2 * 0.05 ** 2))
    assert a["fid"] == pytest.approx(15.0) and a["fid_std"] == pytest.approx(math.sqrt(50.0))
    assert b["fid"] == pytest.approx(40.0) and b["fid_std"] == pytest.approx(math.sqrt(200.0))
    assert a["edit_s_per_image"] == pytest.approx(2.0) and a["edit_s_per_image_std"] == pytest.approx(0.0)
    assert b["edit_s_per_image"] == pytest.approx(4.0)  # the failed unit's NaN seconds are not counted
    assert a["clip_score"] == pytest.approx(20.0) and b["clip_score"] == pytest.approx(30.0)
    names = [c.name for c in board.columns]
    assert names == ["edit_s_per_image", "prepare_s", "fid", "clip_score", "lpips"]  # zeroshot/runtime aggs left out


def test_numbers_match_stored_rows(hand_run: Path) -> None:
    """Recompute lpips from the stored per-image table independently: per-seed mean, then mean over seeds."""
    run = load_run(hand_run)
    board = build_leaderboard([run])
    lp = run.per_image[run.per_image["metric"] == "lpips"]
    for method, g in lp.groupby("method"):
        per_seed = g.groupby("seed")["value"].mean()
        assert row(board, method)["lpips"] == pytest.approx(per_seed.mean())
        assert row(board, method)["lpips_std"] == pytest.approx(per_seed.std(ddof=1))


def test_markdown_marks_best_values(hand_run: Path) -> None:
    text = render_leaderboard(build_leaderboard([load_run(hand_run)]), "md")
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| **2 ± 0** |" in lines["alpha"]  # runtime: lower is better
    assert "| **15 ± 7.1** |" in lines["alpha"]  # fid: lower is better
    assert "| **30 ± 0** |" in lines["beta"]  # clip_score: higher is better
    assert "| **0.1 ± 0.071** |" in lines["beta"]  # lpips: lower is better
    assert "**" not in lines["alpha"].split(" | ")[-1] and "0.35 ± 0.21" in lines["alpha"]
    assert "| 0 |" in lines["beta"] and "**0**" not in text  # prepare_s is never ranked
    header = text.splitlines()[0]
    assert header == ("| method | model | suite | units | done | failed | edit_s_per_image | prepare_s | fid | "
                      "clip_score | lpips |")
    assert "Bold: best in its column among rows of the same model and suite" in text


def test_best_is_per_model_and_suite(tmp_path: Path) -> None:
    rows = [unit(m, "smile", s, model=model, edit_seconds=t) for m, model, t in
            (("a", "m1", 1.0), ("b", "m1", 2.0), ("c", "m2", 5.0)) for s in (0, 1)]
    board = build_leaderboard([load_run(make_run(tmp_path / "r", rows))])
    frame = board.to_frame()
    best = {frame.loc[i, "method"] for i in board.best["edit_s_per_image"]}
    assert best == {"a"}  # c is alone on m2: nothing to beat, not marked


def test_mixed_provenance_splits_columns(tmp_path: Path) -> None:
    alex, vgg = LPIPS_PROV, {**LPIPS_PROV, "backbone": "lpips-vgg", "weights_sha256": "e" * 64}
    rows, pim = [], []
    for method, prov in (("alpha", alex), ("beta", vgg)):
        for seed in (0, 1):
            r = unit(method, "smile", seed)
            rows.append(r)
            pim.append(per_image(r, "lpips", 0.1 * (seed + 1), prov))
    agg = [aggregate("alpha", "smile", "fid", 5.0), aggregate("beta", "smile", "fid", 6.0)]
    board = build_leaderboard([load_run(make_run(tmp_path / "r", rows, pim, agg))])
    names = [c.name for c in board.columns]
    assert "lpips [lpips-alex]" in names and "lpips [lpips-vgg]" in names and "lpips" not in names
    assert "fid" in names  # same provenance: one column
    f = board.to_frame()
    assert f.loc[f.method == "alpha", "lpips [lpips-alex]"].item() == pytest.approx(0.15)
    assert math.isnan(f.loc[f.method == "alpha", "lpips [lpips-vgg]"].item())
    assert math.isnan(f.loc[f.method == "beta", "lpips [lpips-alex]"].item())
    assert any("lpips was computed with 2 provenances" in n for n in board.notes)
    assert "lpips-vgg" not in board.best and "lpips [lpips-vgg]" not in board.best  # one value: nothing to rank


def test_split_across_runs_and_same_backbone_other_weights(tmp_path: Path) -> None:
    runs = []
    for name, sha in (("r1", "b" * 64), ("r2", "f" * 64)):
        rows = [unit("alpha", "smile", s) for s in (0, 1)]
        runs.append(make_run(tmp_path / name, rows, (), [aggregate("alpha", "smile", "fid", 7.0,
                                                                   prov={**FID_PROV, "weights_sha256": sha})]))
    board = build_leaderboard(load_runs(runs))
    assert board.keys == ["run", "method", "model", "suite"]
    assert sorted(c.name for c in board.columns if c.metric == "fid") == [
        "fid [inception-v3-compat bbbbbbbb]", "fid [inception-v3-compat ffffffff]"]


def test_sort_by_metric_best_first(hand_run: Path) -> None:
    assert list(build_leaderboard([load_run(hand_run)], sort="lpips").to_frame()["method"]) == ["beta", "alpha"]
    assert list(build_leaderboard([load_run(hand_run)], sort="fid").to_frame()["method"]) == ["alpha", "beta"]
    assert list(build_leaderboard([load_run(hand_run)], sort="clip_score").to_frame()["method"]) == ["beta", "alpha"]
    with pytest.raises(HarnessError, match="no such column"):
        build_leaderboard([load_run(hand_run)], sort="nope")


def test_csv_and_parquet_round_trip(hand_run: Path, tmp_path: Path) -> None:
    board = build_leaderboard([load_run(hand_run)])
    frame = pd.read_csv(io.StringIO(render_leaderboard(board, "csv")))
    assert list(frame.columns[:6]) == ["method", "model", "suite", "units", "done", "failed"]
    assert frame.loc[frame.method == "alpha", "lpips"].item() == pytest.approx(0.35)
    assert frame.loc[frame.method == "beta", "fid_std"].item() == pytest.approx(math.sqrt(200.0))
    board.to_frame().to_parquet(tmp_path / "b.parquet")
    assert pd.read_parquet(tmp_path / "b.parquet")["fid"].tolist() == pytest.approx([15.0, 40.0])


def test_write_leaderboard_and_empty_run(hand_run: Path, tmp_path: Path) -> None:
    text = write_leaderboard(hand_run).read_text()
    assert text.startswith("# Leaderboard: run `hand`") and "| alpha |" in text
    empty = make_run(tmp_path / "empty", [unit("a", "smile", 0)])
    (empty / "shards" / "b.parquet").unlink()
    assert "no rows stored yet" in write_leaderboard(empty).read_text()


def test_markdown_escapes_pipes() -> None:
    from harness.reports.render import TextTable

    assert "a\\|b" in to_markdown(TextTable(["x"], [["a|b"]], [False]))


def test_oracle_metrics_rank_higher_and_matrices_are_not_columns(tmp_path: Path) -> None:
    oracle = {"implementation": "oracle", "library_version": "1", "backbone": "world-oracle", "weights_sha256": "",
              "resize": "none", "metric_version": 1}
    rows, pim = [], []
    for method, success in (("good", 1.0), ("bad", 0.0)):
        for seed in (0, 1):
            r = unit(method, "color", seed)
            rows.append(r)
            pim += [per_image(r, "oracle_success", success, oracle), per_image(r, "oracle_changed:shape", 1.0, oracle),
                    per_image(r, "reconstruction_psnr", 30.0 + success, oracle)]
    board = build_leaderboard([load_run(make_run(tmp_path / "r", rows, pim))])
    assert [c.name for c in board.columns] == ["edit_s_per_image", "prepare_s", "oracle_success",
                                               "reconstruction_psnr"]
    f = board.to_frame()
    assert {f.loc[i, "method"] for i in board.best["oracle_success"]} == {"good"}
    assert {f.loc[i, "method"] for i in board.best["reconstruction_psnr"]} == {"good"}


def test_flip_rate_is_the_headline_oracle_column_and_skips_ineligible_units(tmp_path: Path) -> None:
    """oracle_flip and oracle_base_rate are columns, flip before success; NaN flips (originals already at the
    target) are left out of a seed's mean instead of counting as failures."""
    oracle = {"implementation": "oracle", "library_version": "1", "backbone": "world-oracle", "weights_sha256": "",
              "resize": "none", "metric_version": 1}
    nan = float("nan")
    # (seed, item) -> (flip, base, success) of method "m": seed 0 flips 1 of 1 eligible, seed 1 flips 0 of 1.
    units = {(0, "a"): (1.0, 0.0, 1.0), (0, "b"): (nan, 1.0, 1.0), (1, "a"): (0.0, 0.0, 0.0), (1, "b"): (nan, 1.0, 1.0)}
    rows, pim = [], []
    for (seed, item), (flip, base, success) in units.items():
        r = unit("m", "large", seed, item_id=item)
        rows.append(r)
        pim += [per_image(r, "oracle_flip", flip, oracle), per_image(r, "oracle_base_rate", base, oracle),
                per_image(r, "oracle_success", success, oracle)]
    board = build_leaderboard([load_run(make_run(tmp_path / "r", rows, pim))])
    assert [c.name for c in board.columns] == ["edit_s_per_image", "prepare_s", "oracle_flip", "oracle_base_rate",
                                               "oracle_success"]
    f = board.to_frame()
    assert f.loc[0, "oracle_flip"] == 0.5          # seeds: 1/1 and 0/1; a NaN-as-0 mean would give 0.25
    assert f.loc[0, "oracle_success"] == 0.75      # seeds: 1.0 and 0.5 (the no-op-friendly number)
    assert f.loc[0, "oracle_base_rate"] == 0.5
    assert any("oracle_flip" in n for n in board.notes)
    assert "oracle_flip" in to_markdown(board.text_table()).splitlines()[0]
