"""The metrics stage wired into runs: preflight before any work, tables written, leaderboard columns."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.cli import main
from tests.conftest import tiny_run

SUBSTITUTES = {"fid": {"backbone": "random-test", "feature_dim": 8}, "clip": {"enabled": False},
               "lpips": {"net": "squeeze", "random_backbone": True}}


def small(tmp_path: Path, **metrics) -> Path:
    raw = tiny_run(tmp_path / "out", run_id="m", models=["tiny-unet"], seeds=2,
                   methods=[{"name": "random-direction", "options": {"scale": 5.0}}], metrics=metrics)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_missing_inception_weights_exit_2_before_any_work(tmp_path, capsys) -> None:
    path = small(tmp_path, fid={"backbone": "inception", "weights": str(tmp_path / "nope.pth")})
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nope.pth" in err and "metrics.fid.weights" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("uses_clip", [{"fid": {"backbone": "clip"}},
                                       {"fid": {"enabled": False}, "lpips": {"backbone": "clip-features"}}])
def test_missing_clip_model_used_only_by_fid_or_lpips_exit_2_before_any_work(tmp_path, capsys, uses_clip) -> None:
    path = small(tmp_path, clip={"enabled": False, "backend": "transformers", "model": str(tmp_path / "no-clip")},
                 **uses_clip)
    assert main(["run", str(path), "--no-progress"]) == 2
    assert "no-clip" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_metrics_key_exit_2(tmp_path, capsys) -> None:
    path = small(tmp_path, fid={"backbon": "random-test"})
    assert main(["run", str(path), "--no-progress"]) == 2
    assert "metrics.fid.backbon" in capsys.readouterr().err


def test_run_writes_metric_tables_and_leaderboard_columns(tmp_path, capsys) -> None:
    path = small(tmp_path, **SUBSTITUTES)
    assert main(["run", str(path), "--executor", "inprocess", "--no-progress"]) == 0
    run_dir = tmp_path / "out" / "m"
    per_image = pd.read_parquet(run_dir / "metrics" / "per_image.parquet")
    rows = pd.read_parquet(next((run_dir / "shards").glob("*.parquet")))
    assert set(rows.unit_key) <= set(per_image.unit_key)
    assert (per_image[per_image.metric == "lpips"].backbone == "lpips-squeeze-random").all()
    board = (run_dir / "leaderboard.md").read_text()
    assert "| lpips |" in board.replace("| fid | lpips |", "| lpips |") and "RANDOM" in board
    # Recompute metrics with another backbone without regenerating anything.
    assert main(["metrics", str(run_dir), "metrics.fid.feature_dim=4"]) == 0
    saved = yaml.safe_load((run_dir / "metrics" / "config.yaml").read_text())
    assert saved["fid"]["feature_dim"] == 4


@pytest.mark.ray
def test_metrics_sharded_over_ray_workers_equal_the_in_process_tables(ray_session, tmp_path) -> None:
    from harness.config import run_config_from_dict
    from harness.runner import execute, plan

    tables = {}
    for kind in ("inprocess", "ray"):
        raw = tiny_run(tmp_path / kind, run_id="m", models=["tiny-unet"], seeds=3,
                       methods=[{"name": "random-direction", "options": {"scale": 5.0}}], metrics=SUBSTITUTES,
                       executor={"kind": kind, "num_workers": 2, "batch_size": 2})
        summary = execute(plan(run_config_from_dict(raw)), progress=False)
        run_dir = Path(summary.run_dir)
        per = pd.read_parquet(run_dir / "metrics" / "per_image.parquet")
        agg = pd.read_parquet(run_dir / "metrics" / "aggregates.parquet")
        agg = agg[agg.metric.isin(["fid", "lpips"])]  # runtime rows differ by timing, not by sharding
        if kind == "ray":  # the shards' workers wrote the caches; the driver's final pass only read them
            assert len(list((run_dir / "metrics" / "values").glob("*.parquet"))) >= 2
        tables[kind] = (per.drop(columns=["run_id"]).sort_values(["unit_key", "metric"]).reset_index(drop=True),
                        agg.sort_values(["attribute", "strength", "metric"]).reset_index(drop=True))
    pd.testing.assert_frame_equal(tables["ray"][0], tables["inprocess"][0])
    pd.testing.assert_frame_equal(tables["ray"][1], tables["inprocess"][1], check_exact=False, rtol=1e-9)
