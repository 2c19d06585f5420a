"""Runtime summary on hand-made timings: one-off costs counted once, one definition for stage and leaderboard."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metrics.runtime import one_off_seconds, summarise_runtime


def _rows() -> pd.DataFrame:
    """Issue 17.1: method a, one 40 s preparation used by 12 units (every row carries it, as the worker writes
    them), 2 s per edit; the last unit failed. Method b: no preparation, two real-image units sharing one 6 s
    inversion, a third with its own 3 s one, and 0.5 s of compile time per unit."""
    a = pd.DataFrame({"method": "a", "status": ["done"] * 11 + ["failed"], "edit_seconds": [2.0] * 11 + [np.nan],
                      "prepare_seconds": 40.0, "prepare_key": "prep-a", "device": "cpu"})
    b = pd.DataFrame({"method": "b", "status": "done", "edit_seconds": [0.5, 0.7, 0.6], "prepare_seconds": 0.0,
                      "prepare_key": "", "device": "cpu", "inversion_seconds": [6.0, 6.0, 3.0],
                      "inversion_key": ["inv-1", "inv-1", "inv-2"], "compile_seconds": 0.5})
    return pd.concat([a, b], ignore_index=True)


def test_one_off_costs_are_counted_once_and_amortised_over_done_units() -> None:
    out = summarise_runtime(_rows()).set_index("method")
    a, b = out.loc["a"], out.loc["b"]
    assert (a.n_done, a.n_failed) == (11, 1)
    assert a.prepare_seconds_total == pytest.approx(40.0)  # was 480: the prepare time summed over 12 rows
    assert a.prepare_seconds_per_image == pytest.approx(40.0 / 11)
    assert a.seconds_per_image_amortised == pytest.approx(2.0 + 40.0 / 11)
    assert b.prepare_seconds_total == 0.0 and b.edit_seconds_median == pytest.approx(0.6)
    assert b.inversion_seconds_total == pytest.approx(9.0) and b.compile_seconds_total == pytest.approx(1.5)
    # compile time is reported apart, not amortised into the per-image figure
    assert b.seconds_per_image_amortised == pytest.approx(0.6 + 9.0 / 3)
    with pytest.raises(ValueError, match="lack columns"):
        summarise_runtime(_rows().drop(columns=["prepare_key"]))


def test_stage_and_leaderboard_share_one_definition(tmp_path) -> None:
    from harness.reports.data import RunData
    from harness.reports.tables import build_leaderboard

    rows = _rows().assign(model="m", suite="s", unit_key=lambda d: [f"u{i}" for i in range(len(d))], seed=0,
                          item_id="i", attribute="x", strength=1.0)
    board = build_leaderboard([RunData("r", tmp_path, rows, pd.DataFrame(), pd.DataFrame())]).frame
    board = board.set_index("method")
    totals = one_off_seconds(rows, ["method"]).set_index("method")
    assert board.loc["a", "prepare_s"] == totals.loc["a", "prepare_seconds_total"] == pytest.approx(40.0)
    assert board.loc["b", "inversion_s"] == pytest.approx(9.0) and board.loc["b", "compile_s"] == pytest.approx(1.5)
