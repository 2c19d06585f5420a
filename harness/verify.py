"""Determinism report: re-generate a sample of a run's batches and compare the PNGs byte for byte.

Batches are re-run whole (a unit's bytes depend on the batch it ran in), in this process, with the
run's stored prepare artifacts, into a scratch directory; nothing in the run is changed.
"""
from __future__ import annotations

import random
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.errors import ConfigError
from harness.runner import plan
from harness.store import RunStore


@dataclass
class VerifyReport:
    checked: int
    identical: int
    differing: list[str]
    seed: int = 0
    """Seed of the random draw of batches (pass it again to check the same ones)."""
    batches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differing


def verify_run(run_dir: str | Path, sample: int = 4, seed: int | None = None) -> VerifyReport:
    """Re-generate `sample` done batches drawn at random (seeded by `seed`, else a fresh seed, reported)."""
    from harness.worker import Worker

    if sample < 1:
        raise ConfigError("--sample", sample, "an integer >= 1", "the number of batches to re-generate")
    store = RunStore(Path(run_dir))
    config = store.run_config()
    rows = store.read_rows()
    done = rows[rows["status"] == "done"]
    batches = {b.key: b for b in plan(replace(config, metrics={})).batches}  # the grid; no metric model needed
    keys = sorted(set(done["batch_key"]) & set(batches))
    # At random, not a fixed stride: repeated verifies of a run then cover different batches.
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    chosen = random.Random(seed).sample(keys, min(sample, len(keys)))
    scratch = Path(tempfile.mkdtemp(prefix="harness-verify-"))
    try:
        if (store.root / "artifacts").is_dir():
            shutil.copytree(store.root / "artifacts", scratch / "artifacts")
        worker = Worker(replace(config, output_dir=str(scratch.parent), run_id=scratch.name), str(scratch), "verify")
        checked, differing = 0, []
        done_keys = set(done["unit_key"])
        for key in chosen:
            for row in worker.run_batch(batches[key]):
                if row.unit_key not in done_keys:  # failed in the run: no images to compare with
                    continue
                if row.status != "done":
                    differing.append(f"{row.unit_key}: failed on re-run ({row.error})")
                    continue
                for path in (row.original_path, row.edited_path):
                    checked += 1
                    if (scratch / path).read_bytes() != (store.root / path).read_bytes():
                        differing.append(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return VerifyReport(checked, checked - len([d for d in differing if d.endswith(".png")]), differing, seed, chosen)
