"""Worker utilisation from batch timestamps, checked against a brute-force sweep and hand-made timelines."""
from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from harness.utilisation import merged_length, utilisation


def brute_union(intervals: list[tuple[float, float]], step: float = 1e-3) -> float:
    grid = np.arange(0.0, 10.0, step) + step / 2
    covered = np.zeros_like(grid, dtype=bool)
    for a, b in intervals:
        covered |= (grid >= a) & (grid < b)
    return covered.sum() * step


@pytest.mark.parametrize("seed", range(5))
def test_merged_length_matches_a_brute_force_sweep(seed) -> None:
    rng = random.Random(seed)
    intervals = []
    for _ in range(rng.randint(1, 12)):
        a = rng.uniform(0, 9)
        intervals.append((a, min(10.0, a + rng.uniform(0, 2))))
    assert merged_length(intervals) == pytest.approx(brute_union(intervals), abs=5e-3)


def test_merged_length_edge_cases() -> None:
    assert merged_length([]) == 0.0
    assert merged_length([(0, 1), (1, 2)]) == 2.0  # touching
    assert merged_length([(0, 4), (1, 2)]) == 4.0  # nested


def rows(timeline: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    out = []
    for worker, spans in timeline.items():
        for i, (a, b) in enumerate(spans):
            for unit in range(2):  # two units per batch: the batch counts once
                out.append({"worker": worker, "batch_key": f"{worker}-{i}", "unit_key": f"{worker}-{i}-{unit}",
                            "batch_started_at": a, "batch_finished_at": b})
    return pd.DataFrame(out)


def test_utilisation_of_a_hand_made_timeline() -> None:
    # w0 busy 0-4 and 5-10 (idle 1 s); w1 busy 0-6 with overlapping batches (writes of one during the next).
    u = utilisation(rows({"w0": [(0, 4), (5, 10)], "w1": [(0, 3), (2, 6)]}))
    assert u.window_s == 10 and u.busy_s == {"w0": 9, "w1": 6}
    assert u.busy_fraction == pytest.approx(15 / 20)
    assert u.fraction_of(12.0) == pytest.approx(15 / 24)
    # A worker that got no batch still counts when the number started is given.
    assert utilisation(rows({"w0": [(0, 10)]}), workers=2).busy_fraction == pytest.approx(0.5)


def test_failed_units_without_timestamps_are_ignored() -> None:
    frame = rows({"w0": [(0, 2)]})
    frame.loc[len(frame)] = {"worker": "driver", "batch_key": "x", "unit_key": "y",
                             "batch_started_at": np.nan, "batch_finished_at": np.nan}
    u = utilisation(frame)
    assert u.busy_s == {"w0": 2} and u.workers == 1
