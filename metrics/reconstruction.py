"""Reconstruction check for real-image units: the unedited regeneration from the inverted trajectory
against the input image. Every real-image edit is bounded by it, so it is reported per model."""
from __future__ import annotations

import numpy as np
import pandas as pd

from metrics._images import ImageStore

IMPLEMENTATION = "psnr on stored uint8 PNGs, peak 255, mean squared error over all pixels and channels"


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def reconstruction_per_image(done: pd.DataFrame, store: ImageStore) -> pd.DataFrame:
    """PSNR(original regeneration, input) for every done unit that started from a real image."""
    real = done[done["input_path"].notna()] if "input_path" in done else done.iloc[0:0]
    values = [psnr_uint8(store.load_batch([o])[0].numpy(), store.load_batch([i])[0].numpy())
              for o, i in zip(real["original_path"], real["input_path"])]
    meta = ["unit_key", "run_id", "method", "method_version", "model", "suite", "item_id", "attribute", "strength",
            "seed"]
    out = real[meta].copy()
    out["metric"] = "reconstruction_psnr"
    out["value"] = values
    out["implementation"] = IMPLEMENTATION
    out["library_version"] = np.__version__
    out["backbone"] = "none"
    out["weights_sha256"] = ""
    out["resize"] = "none (native resolution)"
    out["metric_version"] = 1
    return out
