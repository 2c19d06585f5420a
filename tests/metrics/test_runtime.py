"""Runtime summary on hand-made timings."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metrics.runtime import summarise_runtime


def test_per_image_seconds_with_one_off_preparation_split_out() -> None:
    rows = pd.DataFrame({
        "method": ["a"] * 5 + ["b"] * 2,
        "status": ["done", "done", "done", "done", "failed", "done", "done"],
        "edit_seconds": [1.0, 2.0, 3.0, 10.0, np.nan, 0.5, 0.7],
        "prepare_seconds": [40.0, 0.0, 0.0, 0.0, 0.0, np.nan, 0.0],
        "device": ["cpu"] * 7,
    })
    out = summarise_runtime(rows).set_index("method")
    a = out.loc["a"]
    assert (a.n_done, a.n_failed) == (4, 1)
    assert a.edit_seconds_mean == pytest.approx(4.0) and a.edit_seconds_median == pytest.approx(2.5)
    assert a.prepare_seconds_total == pytest.approx(40.0) and a.prepare_seconds_per_image == pytest.approx(10.0)
    assert a.seconds_per_image_amortised == pytest.approx(14.0)
    assert out.loc["b"].prepare_seconds_total == 0.0 and out.loc["b"].edit_seconds_median == pytest.approx(0.6)
    with pytest.raises(ValueError, match="lack columns"):
        summarise_runtime(rows.drop(columns=["device"]))
