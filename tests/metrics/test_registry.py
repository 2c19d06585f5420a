"""The metric registry and the provenance key: declared once, read by the stage and the reports alike."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metrics import registry
from metrics._stage import StageContext, StageOutput, mean_aggregates, per_image_frame
from metrics.config import MetricsConfig
from metrics.provenance import PROVENANCE_KEY, Provenance
from metrics.registry import MetricSpec, better, metric_modules, metric_spec, register_metrics
from tests.metrics.helpers import make_run

NO_MODELS = {"device": "cpu", "fid": {"enabled": False}, "clip": {"enabled": False}, "lpips": {"enabled": False},
             "oracle": {"enabled": False}}


def test_directions_come_from_the_declaring_modules() -> None:
    # Issue 17.5: the reports guessed directions from names ("success", "seconds", ...).
    assert [better(m) for m in ("fid", "kid", "lpips", "clip_score", "reconstruction_psnr")] == \
        ["min", "min", "min", "max", "max"]
    assert better("oracle_success") == "max" and better("oracle_changed:shape") is None
    assert metric_spec("oracle_changed:shape").leaderboard is False
    assert better("made_up_success_rate") is None  # undeclared: no guess
    from harness.reports.tables import better as report_better

    assert report_better("made_up_success_rate") is None and report_better("oracle_preservation") == "max"
    import metrics.oracle

    oracle = [m for m in metric_modules() if m.name == "oracle"][0]
    assert oracle.specs == metrics.oracle.METRICS  # the oracle declares its names in one place


def test_a_metric_is_one_registered_module(tmp_path: Path) -> None:
    """A new stage step, registered in a test as a new module would be: the stage runs it, the leaderboard
    ranks it by its declared direction."""
    from harness.reports.data import RunData
    from harness.reports.tables import build_leaderboard
    from metrics.stage import compute_metrics

    prov = Provenance("test_sharpness", "test", "0", "none", "", "none")

    @register_metrics("test-sharpness", MetricSpec("test_sharpness", "per_image", "max"), order=99)
    def sharpness(ctx: StageContext) -> StageOutput:
        per = per_image_frame(ctx.done, {"test_sharpness": np.where(ctx.done["method"] == "m1", 1.0, 2.0)}, prov)
        return StageOutput(per, [mean_aggregates(per, "test_sharpness", ctx)])

    try:
        rows = make_run(tmp_path / "run")
        per, agg = compute_metrics(rows, tmp_path / "run", MetricsConfig.from_dict(NO_MODELS))
        assert set(per.metric) == {"test_sharpness"} and (per[PROVENANCE_KEY] == prov.key).all()
        assert (agg[agg.metric == "test_sharpness"].groupby("method").value.first() == [1.0, 2.0]).all()
        board = build_leaderboard([RunData("r", tmp_path, rows, per, agg)])
        col = [c for c in board.columns if c.metric == "test_sharpness"][0]
        assert col.better == "max"
        assert board.frame.loc[sorted(board.best[col.name]), "method"].tolist() == ["m2"]
    finally:
        registry._MODULES.pop("test-sharpness")


def test_a_metric_name_is_declared_once() -> None:
    with pytest.raises(ValueError, match="already declared"):
        register_metrics("test-duplicate", MetricSpec("lpips", "per_image", "max"))(lambda ctx: StageOutput())
    assert "test-duplicate" not in registry._MODULES


class _Backbone:
    implementation, library_version, name, weights_sha256, resize = "feat", "1", "random-test", "e" * 64, "none"


def test_fid_against_originals_and_against_a_folder_never_share_a_column(tmp_path: Path) -> None:
    # Issue 17.4: FID's provenance omitted the reference set, and reports grouped columns on another tuple than
    # the metrics defined, so a two-run leaderboard put FID-vs-originals and FID-vs-folder in one column.
    from harness.reports.data import RunData
    from harness.reports.tables import build_leaderboard
    from metrics.fid_stage import FolderReference, GroupStats, fid_rows
    from metrics.functional.fid import features_to_stats

    rng = np.random.default_rng(0)
    stats = {("m1", "tiny", "s", "smile", 1.0): GroupStats(features_to_stats(rng.normal(size=(20, 4))),
                                                           features_to_stats(rng.normal(size=(20, 4))), ("a",) * 20)}
    ref = rng.normal(size=(30, 4))
    folder = FolderReference(features_to_stats(ref), ref, "f" * 64)
    vs_originals, vs_folder = fid_rows(stats, _Backbone(), None), fid_rows(stats, _Backbone(), folder)
    assert vs_originals[PROVENANCE_KEY].iloc[0] != vs_folder[PROVENANCE_KEY].iloc[0]
    rows = pd.DataFrame([{"unit_key": "u", "method": "m1", "model": "tiny", "suite": "s", "status": "done",
                          "edit_seconds": 1.0, "prepare_seconds": 0.0, "prepare_key": "", "device": "cpu", "seed": 0}])
    runs = [RunData(name, tmp_path / name, rows, pd.DataFrame(), agg)
            for name, agg in (("a", vs_originals), ("b", vs_folder))]
    fid_columns = [c for c in build_leaderboard(runs).columns if c.metric == "fid"]
    assert len(fid_columns) == 2
    assert {dict(c.provenance)["reference"].split(" ")[0] for c in fid_columns} == {"originals", "folder"}


def test_truncated_clip_text_is_recorded_in_the_rows_warning(tmp_path: Path, tiny_hf_clip_dir: Path) -> None:
    # Issue 17.8: prompts over the text tower's 77 tokens were cut silently.
    from metrics.clip import load_clip_scorer
    from metrics.stage import MetricInputWarning, compute_metrics

    scorer = load_clip_scorer("transformers", str(tiny_hf_clip_dir))
    long = "a " + "very " * 40 + "long prompt"  # one character token per letter: far over 77
    assert scorer.truncation_notes(["a smile", long]) == ["", f"text truncated to 77 of its "
                                                              f"{scorer.text_token_count(long)} tokens"]
    rows = make_run(tmp_path / "run", n_per_group=3, methods=("m1",), attributes=("smile",), n_failed=0)
    rows.loc[1, "target_prompt"] = long
    cfg = MetricsConfig.from_dict({**NO_MODELS, "clip": {"backend": "transformers", "model": str(tiny_hf_clip_dir)}})
    with pytest.warns(MetricInputWarning, match="text truncated to 77"):
        per, agg = compute_metrics(rows, tmp_path / "run", cfg)
    warn = per.set_index("unit_key")["warning"]
    assert "truncated to 77" in warn[rows.unit_key[1]] and warn[rows.unit_key[0]] == ""
    assert rows.unit_key[1] in agg[agg.metric == "clip_score"].warning.iloc[0]
