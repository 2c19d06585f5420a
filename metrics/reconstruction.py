"""Reconstruction check for real-image units: the unedited regeneration from the inverted trajectory
against the input image. Every real-image edit is bounded by it, so it is reported per model."""
from __future__ import annotations

import numpy as np
import pandas as pd

from metrics._images import ImageStore
from metrics._stage import META_COLUMNS, StageContext, StageOutput, mean_aggregates
from metrics.provenance import Provenance
from metrics.registry import MetricSpec, register_metrics

IMPLEMENTATION = "psnr on stored uint8 PNGs, peak 255, mean squared error over all pixels and channels"
PROVENANCE = Provenance("reconstruction_psnr", IMPLEMENTATION, np.__version__, "none", "", "none (native resolution)")


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def reconstruction_per_image(done: pd.DataFrame, store: ImageStore) -> pd.DataFrame:
    """PSNR(original regeneration, input) for every done unit that started from a real image."""
    real = done[done["input_path"].notna()] if "input_path" in done else done.iloc[0:0]
    values = [psnr_uint8(store.load_batch([o])[0].numpy(), store.load_batch([i])[0].numpy())
              for o, i in zip(real["original_path"], real["input_path"])]
    return real[list(META_COLUMNS)].assign(metric="reconstruction_psnr", value=values, **PROVENANCE.columns())


@register_metrics("reconstruction", MetricSpec("reconstruction_psnr", "per_image", "max"), order=50)
def reconstruction_stage(ctx: StageContext) -> StageOutput:
    """PSNR of the unedited regeneration against the input, for units started from a real image."""
    done = ctx.done
    if not (len(done) and "input_path" in done and done["input_path"].notna().any()):
        return StageOutput()
    per = reconstruction_per_image(done, ctx.store)
    return StageOutput(per, [mean_aggregates(per, "reconstruction_psnr", ctx)])
