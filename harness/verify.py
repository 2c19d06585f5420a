"""Determinism report: re-generate a sample of a run's batches and compare the PNGs byte for byte.

Batches are re-run whole (a unit's bytes depend on the batch it ran in), in this process, with the
run's stored prepare artifacts, into a scratch directory; nothing in the run is changed.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from harness.config import run_config_from_dict
from harness.errors import HarnessError
from harness.runner import plan
from harness.store import RunStore


@dataclass
class VerifyReport:
    checked: int
    identical: int
    differing: list[str]

    @property
    def ok(self) -> bool:
        return not self.differing


def verify_run(run_dir: str | Path, sample: int = 4) -> VerifyReport:
    from harness.worker import Worker

    store = RunStore(Path(run_dir))
    if not store.exists():
        raise HarnessError(f"{run_dir} is not a run directory (no config.yaml)")
    config = run_config_from_dict(yaml.safe_load(store.config_path.read_text()))
    rows = store.read_rows()
    done = rows[rows["status"] == "done"]
    batches = {b.key: b for b in plan(config).batches}
    keys = sorted(set(done["batch_key"]) & set(batches))
    chosen = keys[:: max(1, len(keys) // sample)][:sample]
    scratch = Path(tempfile.mkdtemp(prefix="harness-verify-"))
    try:
        if (store.root / "artifacts").is_dir():
            shutil.copytree(store.root / "artifacts", scratch / "artifacts")
        worker = Worker(replace(config, output_dir=str(scratch.parent), run_id=scratch.name), str(scratch), "verify")
        checked, differing = 0, []
        for key in chosen:
            for row in worker.run_batch(batches[key]):
                if row["status"] != "done":
                    differing.append(f"{row['unit_key']}: failed on re-run ({row['error']})")
                    continue
                for col in ("original_path", "edited_path"):
                    checked += 1
                    if (scratch / row[col]).read_bytes() != (store.root / row[col]).read_bytes():
                        differing.append(row[col])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return VerifyReport(checked, checked - len([d for d in differing if d.endswith(".png")]), differing)
