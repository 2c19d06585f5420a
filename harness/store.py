"""The results store: results/<run-id>/ with a manifest, PNG images and Parquet shards of rows.

Layout:
    config.yaml          the fully resolved run config (a changed config on an existing run is refused)
    manifest.json        versions, git commit, hardware, created time
    images/<method>/<unit>.{orig,edit}.png   uint8 RGB, written once
    shards/<batch>.parquet                  one row per unit of a batch, written after its images
    artifacts/<key>.pt                      what a method's `prepare` learned
Every file is written to a temporary name and renamed, so readers never see a partial file; a
batch is done exactly when its shard exists and reads back with the expected schema.
"""
from __future__ import annotations

import contextlib
import difflib
import fcntl
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml

from harness.errors import HarnessError

ROW_STATUSES = ("done", "failed")


@dataclass(frozen=True, kw_only=True)
class UnitRow:
    """One unit's row of a shard: the one row schema (issue 17.13). The field order is the stored column order.

    A row starts "failed" with the outcome fields at their defaults (so no unit is ever missing a reason) and
    is completed with `dataclasses.replace`, which refuses a field that does not exist; `from_record` refuses
    unknown keys too. Keyword-only, so the fields keep the stored order while only the identity fields are
    required. Values are stored as given (no conversion), so shards keep their bytes.
    """

    run_id: str
    unit_key: str
    batch_key: str
    method: str
    """The method's label in the config (its `key`); `method_name` is the registered name."""
    method_name: str
    method_version: int
    options: str
    """The validated method options as sorted JSON."""
    model: str
    suite: str
    item_id: str
    attribute: str | None
    prompt: str | None
    target_prompt: str | None
    strength: float
    seed: int
    noise_seed: str
    """As a string: noise seeds reach 2**63 and Parquet has no unsigned 64-bit column every reader takes."""
    status: str = "failed"
    error: str | None = None
    original_path: str
    edited_path: str
    input_path: str | None = None
    """The real input image as stored (real-image units only)."""
    edit_seconds: float = math.nan
    batch_started_at: float = math.nan
    batch_finished_at: float = math.nan
    prepare_seconds: float
    prepare_key: str | None
    device: str
    worker: str
    info: str | None = None
    """The method's scalar diagnostics (EditOutput.info) as sorted JSON, or None."""
    inversion_seconds: float = 0.0
    inversion_key: str | None = None
    compile_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in ROW_STATUSES:
            raise ValueError(f"row {self.unit_key}: status {self.status!r} is not one of {ROW_STATUSES}")

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "UnitRow":
        """A row from a mapping (a shard's record, a test's row): unknown keys raise ValueError, a missing
        required field TypeError; a missing outcome field (or a column newer than the shard) takes its default."""
        unknown = sorted(set(record) - set(ROW_COLUMNS))
        if unknown:
            raise ValueError(f"unknown row columns {unknown} (the row schema is harness.store.UnitRow)")
        return cls(**record)

    def as_record(self) -> dict[str, Any]:
        """The row as {column: value} in column order (a shallow view, unlike dataclasses.asdict's deep copy)."""
        return {name: getattr(self, name) for name in ROW_COLUMNS}


ROW_COLUMNS = tuple(f.name for f in fields(UnitRow))
"""The shard columns, in their stored order, derived from UnitRow (never listed twice)."""
ADDED_ROW_COLUMNS = ("inversion_seconds", "inversion_key", "compile_seconds")
"""Columns newer than some stored shards: a shard without them is still valid (read as missing values)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def png_bytes(image: Any) -> bytes:
    """uint8 (H, W, 3) array -> PNG bytes (deterministic for the same pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "diffusers", "transformers", "ray", "numpy", "pillow", "torchmetrics", "torch-fidelity",
                 "open-clip-torch", "lpips", "pandas", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def git_state() -> dict[str, Any]:
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


class ConfigChangedError(HarnessError):
    """An existing run was made with another config; `changed` names the top-level keys that differ."""

    def __init__(self, root: Path, changed: list[str], diff: str) -> None:
        self.changed, self.diff = changed, diff
        super().__init__(f"run {root.name!r} already exists with a different config ({', '.join(changed)}); "
                         f"use a new run_id (run_id=...) or delete {root}.\n{diff}")


class RunInUseError(HarnessError):
    """Another driver holds the run's lock."""

    def __init__(self, root: Path, owner: str) -> None:
        self.owner = owner
        super().__init__(f"run {root.name!r} is in use by {owner}; wait for it to finish "
                         f"(`harness status {root}`) or use another run_id")


def _changes(old: Any, new: Any) -> Any:
    """What changed between two config values: only the differing entries of mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    return [old, new]


class RunStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- layout -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    def exists(self) -> bool:
        return self.config_path.is_file()

    # -- creation and identity ----------------------------------------------------------------
    def initialise(self, resolved_config: dict[str, Any], extra: dict[str, Any] | None = None,
                   amendable: tuple[str, ...] = ()) -> None:
        """Create the run, or check that an existing run was made with the same config.

        Top-level keys in `amendable` may differ: config.yaml then takes the new values and manifest.json
        records the change (`amendments`), so a continued run says what it was continued with."""
        text = yaml.safe_dump(resolved_config, sort_keys=True)
        if self.exists():
            saved = self.read_config()  # a damaged file is refused clearly before any comparison
            old = self.config_path.read_text()
            if old == text:
                return
            changed = sorted(k for k in set(saved) | set(resolved_config) if saved.get(k) != resolved_config.get(k))
            if changed and set(changed) <= set(amendable):
                manifest = self.manifest()
                manifest.setdefault("amendments", []).append({
                    "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "changed": {k: _changes(saved.get(k), resolved_config.get(k)) for k in changed}})
                atomic_write_bytes(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True).encode())
                atomic_write_bytes(self.config_path, text.encode())
                return
            diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                "existing config.yaml", "requested config"))
            raise ConfigChangedError(self.root, changed, diff)
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "run_id": self.root.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(),
            "git": git_state(),
            "driver_hardware": hardware(),
            **(extra or {}),
        }
        atomic_write_bytes(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True).encode())
        atomic_write_bytes(self.config_path, text.encode())  # last: its presence marks a complete creation

    def manifest(self) -> dict[str, Any]:
        """manifest.json ({} when absent); a damaged one is one clear error, not a traceback."""
        return self.read_mapping(self.manifest_path, json.loads) if self.manifest_path.is_file() else {}

    def read_config(self) -> dict[str, Any]:
        """config.yaml as saved at creation; a damaged one is one clear error, not a traceback."""
        if not self.exists():
            raise HarnessError(f"{self.root} is not a run directory (no config.yaml)")
        return self.read_mapping(self.config_path, yaml.safe_load)

    def read_mapping(self, path: Path, parse: Any = yaml.safe_load) -> dict[str, Any]:
        """A YAML/JSON file of the run that must hold a mapping; anything else is a HarnessError naming it."""
        try:
            data = parse(path.read_text())
        except (ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:  # json's errors are ValueErrors
            data = exc
        if not isinstance(data, dict):
            raise self._damaged(path, data)
        return data

    def run_config(self) -> Any:
        """The run's config (a RunConfig) from config.yaml."""
        from harness.config import run_config_from_dict
        from harness.errors import ConfigError

        try:
            return run_config_from_dict(self.read_config())
        except ConfigError as exc:
            raise self._damaged(self.config_path, exc) from None

    @staticmethod
    def _damaged(path: Path, found: Any) -> HarnessError:
        what = f"{type(found).__name__}: {found}" if isinstance(found, Exception) else f"a {type(found).__name__}"
        what = " ".join(what.split())[:200]  # one line, whatever the parser said
        return HarnessError(f"{path} is damaged ({what}); restore it from a copy, or start a new run with "
                            "another run_id")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive use of the run directory by one driver; a second one is refused clearly."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "run.lock"
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise RunInUseError(self.root, f.read().strip() or "another process") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {platform.node()} since {time.strftime('%H:%M:%S')}")
            f.flush()
            try:
                yield
            finally:
                f.seek(0)
                f.truncate()
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- images, shards, artifacts ------------------------------------------------------------
    def write_image(self, rel_path: str, image: Any) -> None:
        atomic_write_bytes(self.root / rel_path, png_bytes(image))

    def shard_path(self, batch_key: str) -> Path:
        return self.shard_dir / f"{batch_key}.parquet"

    def write_shard(self, batch_key: str, rows: Sequence[UnitRow]) -> None:
        import pandas as pd

        bad = [type(row).__name__ for row in rows if not isinstance(row, UnitRow)]
        if bad:  # a dict would have had its unknown keys dropped and missing ones written as nulls
            raise TypeError(f"write_shard takes UnitRow rows, got {sorted(set(bad))} (UnitRow.from_record converts)")
        frame = pd.DataFrame([row.as_record() for row in rows], columns=list(ROW_COLUMNS))
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        atomic_write_bytes(self.shard_path(batch_key), buf.getvalue())

    def _valid_shard(self, path: Path) -> bool:
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
            return set(ROW_COLUMNS) - set(ADDED_ROW_COLUMNS) <= set(schema.names)
        except Exception:  # truncated or foreign files: their batch is redone
            return False

    def corrupt_shards(self) -> list[Path]:
        """Shards that do not read back with the row schema (a write cut short, a foreign file)."""
        return [p for p in sorted(self.shard_dir.glob("*.parquet")) if not self._valid_shard(p)]

    def done_batches(self) -> set[str]:
        """Batches whose shard reads back. Read-only: a corrupt shard is left where it is (see `repair`)."""
        return {p.stem for p in sorted(self.shard_dir.glob("*.parquet")) if self._valid_shard(p)}

    def repair(self) -> list[Path]:
        """Set corrupt shards aside as *.corrupt so their batches are redone; only `harness run` calls this,
        under the run's lock, and logs what it moved. Returns the new paths."""
        moved = []
        for path in self.corrupt_shards():
            target = path.with_suffix(".corrupt")
            path.rename(target)
            moved.append(target)
        return moved

    def read_rows(self) -> "Any":
        import pandas as pd

        frames = [pd.read_parquet(p) for p in sorted(self.shard_dir.glob("*.parquet")) if self._valid_shard(p)]
        if not frames:
            return pd.DataFrame(columns=list(ROW_COLUMNS))
        return pd.concat(frames, ignore_index=True).sort_values("unit_key", ignore_index=True)

    def update_shard(self, batch_key: str, rows: Sequence[UnitRow]) -> None:
        """Replace some units' rows in a batch's shard (a retry), keeping the other rows as they are."""
        import pandas as pd

        new = {row.unit_key: row for row in rows}
        stored = pd.read_parquet(self.shard_path(batch_key)).to_dict("records")
        # A shard older than ADDED_ROW_COLUMNS keeps them missing (None), as reading it shows them, not defaulted.
        merged = [new.pop(key) if (key := str(record["unit_key"])) in new
                  else UnitRow.from_record({**dict.fromkeys(ADDED_ROW_COLUMNS), **{str(k): v for k, v in record.items()}})
                  for record in stored]
        if new:
            raise ValueError(f"units {sorted(new)} are not in batch {batch_key}")
        self.write_shard(batch_key, merged)

    def artifact_path(self, key: str) -> Path:
        return self.root / "artifacts" / f"{key}.pt"

    def save_artifact(self, key: str, state: dict[str, Any]) -> None:
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.artifact_path(key), buf.getvalue())

    def load_artifact(self, key: str) -> dict[str, Any] | None:
        import torch

        path = self.artifact_path(key)
        if not path.is_file():
            return None
        return torch.load(path, map_location="cpu", weights_only=False)
