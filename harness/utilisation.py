"""How busy the workers of a run were, from the batch timestamps in its rows.

A worker is busy while it holds a batch, from taking its device lock to writing the batch's last image
(`batch_started_at`, `batch_finished_at`); its intervals are merged, so a batch whose images are written
while the next one computes is not counted twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable


def merged_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length of the union of [start, end] intervals."""
    total, cur_start = 0.0, 0.0
    cur_end: float | None = None  # None until the first interval
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


@dataclass(frozen=True)
class Utilisation:
    workers: int
    window_s: float
    """From the first batch start to the last batch end, over all workers."""
    busy_s: dict[str, float]
    """Merged busy time per worker."""

    @property
    def busy_fraction(self) -> float:
        """Busy time over workers x window: 1.0 means no worker was ever idle between first start and last end."""
        return sum(self.busy_s.values()) / (self.workers * self.window_s) if self.window_s > 0 else float("nan")

    def fraction_of(self, wall_s: float) -> float:
        """Busy time over workers x an outer wall time (e.g. including worker start and model load)."""
        return sum(self.busy_s.values()) / (self.workers * wall_s)


def utilisation(rows: Any, workers: int | None = None) -> Utilisation:
    """From a run's rows (a DataFrame with worker, batch_key, batch_started_at, batch_finished_at).

    `workers` defaults to the number of distinct workers seen; pass the number started when some did no work."""
    batches = rows.dropna(subset=["batch_started_at", "batch_finished_at"]).drop_duplicates("batch_key")
    busy = {str(w): merged_length(zip(g["batch_started_at"], g["batch_finished_at"]))
            for w, g in batches.groupby("worker")}
    window = float(batches["batch_finished_at"].max() - batches["batch_started_at"].min()) if len(batches) else 0.0
    return Utilisation(workers or len(busy), window, busy)
