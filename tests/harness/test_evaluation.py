"""The metrics stage wired into runs: preflight before any work, tables written, leaderboard columns."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
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
