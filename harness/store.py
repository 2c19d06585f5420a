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
    def initialise(self, resolved_config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        """Create the run, or check that an existing run was made with the same config."""
        text = yaml.safe_dump(resolved_config, sort_keys=True)
        if self.exists():
            old = self.config_path.read_text()
            if old != text:
                diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                    "existing config.yaml", "requested config"))
                raise HarnessError(
                    f"run {self.root.name!r} already exists with a different config; "
                    f"use a new run_id (run_id=...) or delete {self.root}.\n{diff}")
            return
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
        return json.loads(self.manifest_path.read_text())

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
                owner = f.read().strip() or "another process"
                raise HarnessError(f"run {self.root.name!r} is in use by {owner}; wait for it to finish "
                                   f"(`harness status {self.root}`) or use another run_id") from None
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

    def done_batches(self) -> set[str]:
        done = set()
        for path in sorted(self.shard_dir.glob("*.parquet")):
            if self._valid_shard(path):
                done.add(path.stem)
            else:
                path.rename(path.with_suffix(".corrupt"))
        return done

    def read_rows(self) -> "Any":
        import pandas as pd

        frames = [pd.read_parquet(p) for p in sorted(self.shard_dir.glob("*.parquet")) if self._valid_shard(p)]
        if not frames:
            return pd.DataFrame(columns=list(ROW_COLUMNS))
        return pd.concat(frames, ignore_index=True).sort_values("unit_key", ignore_index=True)

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
