"""Oracle metrics on hand-built edits whose true factors are known."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from PIL import Image

from harness.world import Scene, render
from metrics._images import ImageStore
from metrics.oracle import oracle_per_image

BASE = Scene(shape="circle", fg="red", bg="blue", size="small", x="center", y="middle")
CASES = {  # unit -> edited scene (None: a blank image, no object)
    "ok": dataclasses.replace(BASE, size="large"),
    "leaky": dataclasses.replace(BASE, size="large", fg="green", x="left"),
    "missed": dataclasses.replace(BASE, fg="yellow"),
    "blank": None,
}


def test_oracle_values_match_the_known_edits(tmp_path) -> None:
    rows = []
    Image.fromarray(render(BASE)).save(tmp_path / "orig.png")
    for unit, scene in CASES.items():
        img = render(scene) if scene is not None else np.full((32, 32, 3), 255, np.uint8)
        Image.fromarray(img).save(tmp_path / f"{unit}.png")
        rows.append(dict(unit_key=unit, run_id="r", method="m", method_version=1, model="w", suite="world",
                         item_id=unit, attribute="large", strength=1.0, seed=0, original_path="orig.png",
                         edited_path=f"{unit}.png"))
    out = oracle_per_image(pd.DataFrame(rows), ImageStore(tmp_path), {"large": ("size", "large")})
    v = out.pivot(index="unit_key", columns="metric", values="value")
    assert v.loc["ok", "oracle_success"] == 1 and v.loc["ok", "oracle_preservation"] == 1
    assert v.loc["leaky", "oracle_success"] == 1 and np.isclose(v.loc["leaky", "oracle_preservation"], 3 / 5)
    assert v.loc["leaky", "oracle_changed:fg"] == 1 and v.loc["leaky", "oracle_changed:x"] == 1
    assert v.loc["leaky", "oracle_changed:shape"] == 0
    assert v.loc["missed", "oracle_success"] == 0 and np.isclose(v.loc["missed", "oracle_preservation"], 4 / 5)
    assert v.loc["blank", "oracle_valid"] == 0 and v.loc["blank", "oracle_success"] == 0
