"""Synthetic run directories for report tests: hand-written rows, metric tables and tiny PNGs, no model."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import yaml

from harness.hashing import stable_hash
from harness.store import RunStore, UnitRow

LPIPS_PROV = {"implementation": "lpips v0.1", "library_version": "0.1.4", "backbone": "lpips-alex",
              "weights_sha256": "a" * 64, "resize": "none", "metric_version": 1}
FID_PROV = {"implementation": "torch-fidelity", "library_version": "0.4.0", "backbone": "inception-v3-compat",
            "weights_sha256": "b" * 64, "resize": "299 bilinear", "metric_version": 1}
CLIP_PROV = {"implementation": "open_clip", "library_version": "3.3.0", "backbone": "ViT-L-14",
             "weights_sha256": "c" * 64, "resize": "224 bicubic", "metric_version": 1}
ZS_PROV = {"implementation": "open_clip zero-shot", "library_version": "3.3.0", "backbone": "ViT-B-32",
           "weights_sha256": "d" * 64, "resize": "224 bicubic", "metric_version": 1}


def unit(method: str, attribute: str, seed: int, strength: float = 1.0, *, model: str = "m", suite: str = "s",
         item_id: str | None = None, method_name: str | None = None, options: dict | None = None,
         edit_seconds: float = 1.0, status: str = "done", device: str = "cpu") -> dict[str, Any]:
    """One row in the store's schema (image paths follow the store's layout)."""
    item_id = item_id or attribute
    key = stable_hash(method, model, suite, item_id, strength, seed)
    base = f"images/{method}/{key}"
    return {"run_id": "syn", "unit_key": key, "batch_key": "b", "method": method,
            "method_name": method_name or method, "method_version": 1, "options": json.dumps(options or {}),
            "model": model, "suite": suite, "item_id": item_id, "attribute": attribute, "prompt": "a person",
            "target_prompt": f"a {attribute} person", "strength": float(strength), "seed": seed,
            "noise_seed": str(seed), "status": status, "error": None if status == "done" else "boom",
            "original_path": f"{base}.orig.png", "edited_path": f"{base}.edit.png", "edit_seconds": edit_seconds,
            "prepare_seconds": 0.0, "prepare_key": "", "device": device, "worker": "w", "info": None}


def per_image(row: dict[str, Any], metric: str, value: float, prov: dict[str, Any] = LPIPS_PROV) -> dict[str, Any]:
    keys = ("unit_key", "run_id", "method", "method_version", "model", "suite", "item_id", "attribute", "strength",
            "seed")
    return {**{k: row[k] for k in keys}, "metric": metric, "value": value, **prov}


def aggregate(method: str, attribute: str | None, metric: str, value: float, *, strength: float | None = 1.0,
              model: str = "m", suite: str = "s", std: float = float("nan"), n: int = 2,
              prov: dict[str, Any] = FID_PROV, **extra: Any) -> dict[str, Any]:
    return {"method": method, "model": model, "suite": suite, "attribute": attribute, "strength": strength,
            "metric": metric, "value": value, "std": std, "n": n, "warning": None, "reference_hash": "r",
            **prov, **extra}


def make_run(root: Path, rows: Iterable[dict[str, Any]], per_image_rows: Iterable[dict[str, Any]] = (),
             aggregate_rows: Iterable[dict[str, Any]] = (), config: dict[str, Any] | None = None,
             png: int = 8) -> Path:
    """Write a run directory: config.yaml, manifest.json, one shard, PNGs of done units, metrics tables."""
    rows = list(rows)
    store = RunStore(root)
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"run_id": root.name, "models": sorted({r["model"] for r in rows}), "seeds": [0, 1],
           "sampler": {"num_steps": 10, "eta": 0.0, "guidance_scale": 7.5}, **(config or {})}
    store.config_path.write_text(yaml.safe_dump(cfg))
    store.manifest_path.write_text(json.dumps({"run_id": root.name, "created": "2026-01-01T00:00:00+00:00",
                                               "git": {"commit": "0" * 40, "dirty": False},
                                               "versions": {"python": "3.11"}}))
    for i, r in enumerate(rows):
        if r["status"] == "done":
            color = np.array([40 * i % 256, 90, 200], np.uint8)
            store.write_image(r["original_path"], np.full((png, png, 3), 128, np.uint8))
            store.write_image(r["edited_path"], np.broadcast_to(color, (png, png, 3)).copy())
    store.write_shard("b", [UnitRow.from_record(r) for r in rows])
    (root / "metrics").mkdir(exist_ok=True)
    if per_image_rows := list(per_image_rows):
        pd.DataFrame(per_image_rows).to_parquet(root / "metrics" / "per_image.parquet", index=False)
    if aggregate_rows := list(aggregate_rows):
        pd.DataFrame(aggregate_rows).to_parquet(root / "metrics" / "aggregates.parquet", index=False)
    return root
