"""Helpers for metric tests: random uint8 images and a synthetic run directory of PNGs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image


def random_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def write_png(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def make_run(run_dir: Path, n_per_group: int = 12, methods: tuple[str, ...] = ("m1", "m2"),
             attributes: tuple[str, ...] = ("smile", "age"), n_failed: int = 1, size: int = 32) -> pd.DataFrame:
    """Write originals/edits as PNGs and return the harness rows (one per unit). Originals are shared by
    method and attribute (same seeds), edits differ; the last `n_failed` units of each group failed."""
    rows = []
    originals = random_images(n_per_group, size, seed=1)
    for mi, m in enumerate(methods):
        for ai, a in enumerate(attributes):
            edits = random_images(n_per_group, size, seed=100 + 10 * mi + ai)
            # edits are brightened by a method/attribute-dependent amount, so groups differ in FID
            edits = (edits.float() * (0.6 + 0.1 * mi + 0.05 * ai)).to(torch.uint8)
            for i in range(n_per_group):
                failed = i >= n_per_group - n_failed
                orig_rel, edit_rel = f"images/orig/{i:03d}.png", f"images/{m}/{a}/{i:03d}.png"
                write_png(run_dir / orig_rel, originals[i])
                if not failed:
                    write_png(run_dir / edit_rel, edits[i])
                rows.append(dict(
                    unit_key=f"{m}|{a}|{i:03d}", run_id="r0", method=m, method_version=1, model="tiny", suite="s",
                    item_id=f"item{i}", attribute=a, prompt="a photo of a person",
                    target_prompt="" if i % 3 == 0 else f"a photo of a {a} person", strength=1.0, seed=i % 3,
                    status="failed" if failed else "done", original_path=orig_rel,
                    edited_path="" if failed else edit_rel, edit_seconds=np.nan if failed else 0.5 + 0.1 * i,
                    prepare_seconds=3.0, prepare_key=f"prepare-{m}", device="cpu"))
    return pd.DataFrame(rows)
