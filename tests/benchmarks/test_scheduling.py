"""benchmarks/scheduling.py runs end to end on fake GPUs and reports utilisation figures that add up."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.ray
def test_scheduling_benchmark_runs_on_fake_gpus(tmp_path) -> None:
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scheduling.py"), "--gpus", "2", "--units", "8",
         "--min-cost", "0.01", "--max-cost", "0.05", "--jobs-per-worker", "2", "--write", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if re.match(r"\| 2 \|", line)]
    assert len(rows) == 1
    busy, busy_all, makespan, bound, ratio, injected = (float(c) for c in rows[0].strip("|").split("|")[1:])
    assert 0 < busy_all <= busy <= 1.0
    assert makespan >= bound > 0 and ratio == pytest.approx(makespan / bound, abs=2e-3)
    assert 8 * 0.01 <= injected <= 8 * 0.05
