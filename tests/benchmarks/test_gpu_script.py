"""benchmarks/gpu.sh, the one-call GPU benchmark, through its CPU dry run (tiny models, same steps)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.sh"


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(["bash", str(SCRIPT), "--python", sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_bad_invocations_exit_2_naming_the_argument_and_write_nothing(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"  # never the repository's benchmarks/RESULTS.md
    for args, needle in ((["--budget", "8min"], "--budget 8min"), (["--frobnicate"], "--frobnicate"),
                         (["--dry-run", "--only", "nope"], "--only nope"), (["--dry-run", "--only"], "--only needs"),
                         (["--python", str(tmp_path / "no-python")], "--python"),
                         (["--results", str(tmp_path / "absent" / "R.md")], "absent")):
        res = _run("--results", str(results), *args)
        assert res.returncode == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        # Every argument is validated before anything is written: --only used to be checked after the
        # section header was appended, leaving a header with no figures.
        assert not results.exists() and not (tmp_path / "absent").exists()


def test_dry_run_of_one_step_writes_its_section(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    res = _run("--dry-run", "--only", "sd-vs-diffusers", "--results", str(results))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    text = results.read_text()
    assert "--dry-run: CPU, tiny models; not GPU figures" in text
    assert "### sd on tiny-sd" in text and "diffusers StableDiffusionPipeline" in text and "Metrics stage" in text


@pytest.mark.slow
def test_full_dry_run_measures_every_step(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    res = _run("--dry-run", "--results", str(results), timeout=2400)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    text = results.read_text()
    assert "not measured" not in text
    for method in ("sd", "avi", "park", "hspace-pca", "jacobian"):
        assert f"### {method} on " in text
