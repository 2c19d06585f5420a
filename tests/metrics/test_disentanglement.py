"""Disentanglement matrix on a hand-built scorer whose effects are known exactly."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from metrics.disentanglement import disentanglement_matrix, score_images, scores_from_arrays, to_matrix

ATTRS = ["smile", "age", "hat"]
# EFFECT[edit][measured] = pixel steps the edit moves that attribute's pixel (signed)
EFFECT = {"smile": {"smile": 40, "age": -10, "hat": 0},
          "age": {"smile": 5, "age": 60, "hat": -20},
          "hat": {"smile": 0, "age": 0, "hat": 30}}


def pixel_scorer(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """s_a(I) = value of pixel (0, k) in channel 0 / 255, where k is the attribute's index."""
    return {a: images[:, 0, 0, k].double() / 255.0 for k, a in enumerate(ATTRS)}


def _batch(edit: str, repeat: int, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    orig = torch.from_numpy(rng.integers(80, 170, size=(n, 3, 4, 4))).to(torch.uint8)
    edited = orig.clone()
    for k, a in enumerate(ATTRS):
        edited[:, 0, 0, k] = (orig[:, 0, 0, k].int() + EFFECT[edit][a] + repeat).to(torch.uint8)
    return orig, edited


def _scores(rng: np.random.Generator) -> pd.DataFrame:
    parts = []
    for edit in ATTRS:
        for r in range(3):  # repeat r adds r pixel steps to every effect: known mean and std over repeats
            o, e = _batch(edit, r, 5, rng)
            parts.append(score_images(pixel_scorer, o, e, [edit] * 5, [r] * 5, batch_size=2))
    return pd.concat(parts, ignore_index=True)


def test_matrix_recovers_known_effects_and_std() -> None:
    cells = disentanglement_matrix(_scores(np.random.default_rng(0)))
    mean, std = to_matrix(cells, "mean"), to_matrix(cells, "std")
    for edit in ATTRS:
        for a in ATTRS:
            steps = [abs(EFFECT[edit][a] + r) for r in range(3)]
            assert mean.loc[edit, a] == pytest.approx(np.mean(steps) / 255, abs=1e-12)
            assert std.loc[edit, a] == pytest.approx(np.std(steps, ddof=1) / 255, abs=1e-12)
    assert set(cells["n_repeats"]) == {3} and set(cells["n_images"]) == {15}


def test_signed_option_keeps_direction() -> None:
    cells = disentanglement_matrix(_scores(np.random.default_rng(1)), signed=True)
    m = to_matrix(cells)
    assert m.loc["smile", "age"] == pytest.approx((-10 + 1) / 255, abs=1e-12)  # mean of -10, -9, -8
    assert m.loc["age", "hat"] == pytest.approx((-20 + 1) / 255, abs=1e-12)
    assert bool(cells["signed"].all())


def test_scores_from_arrays_validates_lengths() -> None:
    with pytest.raises(ValueError):
        scores_from_arrays(["smile"], [0], {"smile": [0.1, 0.2]}, {"smile": [0.3, 0.4]})
    with pytest.raises(ValueError, match="lacks columns"):
        disentanglement_matrix(pd.DataFrame({"edit": []}))
