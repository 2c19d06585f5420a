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


def test_metrics_of_a_run_interrupted_before_its_metrics_stage(tmp_path, capsys, monkeypatch) -> None:
    """The run's `metrics:` section is saved before any work: `harness metrics` uses it, not Inception's defaults;
    on a run still in progress it says so."""
    import harness.evaluation
    from harness.store import RunStore

    path = small(tmp_path, **SUBSTITUTES)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(harness.evaluation, "run_metrics", interrupted)
        assert main(["run", str(path), "--executor", "inprocess", "--no-progress"]) == 130
    run_dir = tmp_path / "out" / "m"
    assert not (run_dir / "metrics" / "per_image.parquet").exists()
    with RunStore(run_dir).lock():  # a driver still holds the run
        assert main(["metrics", str(run_dir)]) == 2
        assert "still running" in capsys.readouterr().err
    assert main(["metrics", str(run_dir)]) == 0
    per_image = pd.read_parquet(run_dir / "metrics" / "per_image.parquet")
    assert (per_image[per_image.metric == "lpips"].backbone == "lpips-squeeze-random").all()


def test_reports_count_only_units_whose_rows_exist_and_status_changes_nothing(tmp_path, capsys) -> None:
    """A shard cut short after the metrics stage: status is read-only and says so, the report's metric cells
    average only the units it counts, and the next run sets the shard aside (logged) and redoes its batch."""
    from harness.reports import build_leaderboard, load_runs

    path = small(tmp_path, **SUBSTITUTES)
    assert main(["run", str(path), "--executor", "inprocess", "--no-progress"]) == 0
    run_dir = tmp_path / "out" / "m"
    shard = sorted((run_dir / "shards").glob("*.parquet"))[0]
    lost = set(pd.read_parquet(shard).unit_key)
    shard.write_bytes(shard.read_bytes()[:100])
    listing = sorted(p.name for p in run_dir.rglob("*"))
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    assert "unreadable shard" in capsys.readouterr().out
    assert main(["report", str(run_dir), "--format", "csv"]) == 0
    assert sorted(p.name for p in (run_dir).rglob("*")) == listing and shard.read_bytes()[:100] == shard.read_bytes()
    board = build_leaderboard(load_runs([run_dir])).to_frame().iloc[0]
    per_image = pd.read_parquet(run_dir / "metrics" / "per_image.parquet")
    kept = per_image[(per_image.metric == "lpips") & ~per_image.unit_key.isin(lost)]
    assert (board["units"], board["done"]) == (2, 2)
    assert board["lpips"] == pytest.approx(kept.groupby("seed")["value"].mean().mean())
    assert pd.isna(board.get("fid"))  # computed over the lost units too: not shown until recomputed
    assert main(["run", str(path), "--executor", "inprocess", "--no-progress"]) == 0
    assert "unreadable: set aside" in capsys.readouterr().err
    assert shard.with_suffix(".corrupt").exists()
    assert len(load_runs([run_dir])[0].rows) == 4
