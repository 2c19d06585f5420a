"""Lifecycle commands on damaged or odd input: one clear line and exit status 2, never a traceback."""
from __future__ import annotations

import pytest

from harness.cli import main
from harness.store import RunStore


@pytest.mark.parametrize("command, damaged", [(c, "config.yaml") for c in ("status", "verify", "metrics", "report")]
                         + [("report", "manifest.json")])  # only reports read the manifest
def test_damaged_run_files_are_one_clear_line(tmp_path, capsys, command, damaged) -> None:
    store = RunStore(tmp_path / "r")
    store.initialise({"run_id": "r"})
    (store.root / damaged).write_text("{{{ not: [valid" if damaged == "config.yaml" else "[1, 2")
    assert main([command, str(store.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{damaged} is damaged" in err[0], err


def test_verify_sample_zero_is_refused(tmp_path, capsys) -> None:
    assert main(["verify", str(tmp_path), "--sample", "0"]) == 2
    err = capsys.readouterr().err
    assert "--sample" in err and ">= 1" in err
