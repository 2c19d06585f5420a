"""`harness report`, `harness leaderboard` and `harness paper-tables` on synthetic runs."""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from tests.harness.reports.conftest import svd_run


def test_report_md_writes_leaderboard(hand_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(hand_run), "--sort", "lpips"]) == 0
    out = capsys.readouterr().out
    assert out == (hand_run / "leaderboard.md").read_text()
    assert out.index("| beta |") < out.index("| alpha |")


def test_report_formats(hand_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(hand_run), "--format", "tex"]) == 0
    assert r"\begin{tabular}" in capsys.readouterr().out
    assert main(["report", str(hand_run), "--format", "csv"]) == 0
    assert pd.read_csv(io.StringIO(capsys.readouterr().out))["fid"].tolist() == pytest.approx([15.0, 40.0])
    assert main(["report", str(hand_run), "--format", "parquet"]) == 0
    assert pd.read_parquet(hand_run / "leaderboard.parquet")["lpips"].tolist() == pytest.approx([0.35, 0.1])
    assert main(["report", str(hand_run), "--format", "html"]) == 0
    assert capsys.readouterr().out.strip().endswith("report.html") and (hand_run / "report.html").is_file()


def test_leaderboard_over_runs(hand_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = svd_run(tmp_path / "svd")
    assert main(["leaderboard", str(hand_run), str(other), "--format", "csv", "--out", str(tmp_path / "b.csv")]) == 0
    frame = pd.read_csv(tmp_path / "b.csv")
    assert set(frame["run"]) == {"hand", "svd"} and len(frame) == 2 + 3
    assert main(["leaderboard", str(hand_run), "--format", "parquet"]) == 2  # needs --out
    assert "needs --out" in capsys.readouterr().err
    assert not (hand_run / "leaderboard.md").exists()  # `leaderboard` writes nothing into runs


def test_paper_tables_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = svd_run(tmp_path / "svd", drop_rows=(("park", "old"),))
    assert main(["paper-tables", str(run), "--table", "svd"]) == 0
    out = capsys.readouterr().out
    assert "| SD [45] | paper | 31.75 / 26.6 / 0.34 |" in out and "- no `park` rows for attribute old" in out
    assert main(["paper-tables", str(run), "--format", "tex", "--out", str(tmp_path / "t.tex")]) == 0
    assert (tmp_path / "t.tex").read_text().count(r"\begin{tabular}") == 3


def test_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
