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
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml

from harness.errors import HarnessError

ROW_COLUMNS = (
    "run_id", "unit_key", "batch_key", "method", "method_name", "method_version", "options", "model", "suite",
    "item_id", "attribute", "prompt", "target_prompt", "strength", "seed", "noise_seed", "status", "error",
    "original_path", "edited_path", "input_path", "edit_seconds",
    "batch_started_at", "batch_finished_at", "prepare_seconds", "prepare_key", "device", "worker", "info",
    "inversion_seconds", "inversion_key", "compile_seconds",
)
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
    def __init__(self, root: Path) -> None:
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

    def write_shard(self, batch_key: str, rows: list[dict[str, Any]]) -> None:
        import pandas as pd

        frame = pd.DataFrame([{c: row.get(c) for c in ROW_COLUMNS} for row in rows], columns=list(ROW_COLUMNS))
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

    def update_shard(self, batch_key: str, rows: list[dict[str, Any]]) -> None:
        """Replace some units' rows in a batch's shard (a retry), keeping the other rows as they are."""
        import pandas as pd

        new = {row["unit_key"]: row for row in rows}
        merged = [new.pop(row["unit_key"], row) for row in pd.read_parquet(self.shard_path(batch_key)).to_dict("records")]
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
