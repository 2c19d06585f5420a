"""Rendering, captions and the train/held-out split of the ground-truth world."""

from __future__ import annotations

import hashlib
import itertools
import re
from functools import lru_cache
from typing import Sequence

import numpy as np

from ._scene import draw_scenes
from .factors import (
    COLORS, FACTOR_NAMES, PALETTE, SHAPES, SIZES, XS, YS, Scene,
)

SUPERSAMPLE = 4  # 4x4 samples per pixel: anti-aliased edges, coverage in steps of 1/16
HELDOUT_FRACTION = 0.15
SPLITS = ("train", "heldout")

_SQRT3_2 = np.sqrt(3.0) / 2.0


def shape_coverage(shape: str, cx: float, cy: float, h: float, resolution: int,
                   supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel covered by ``shape`` centred at (cx, cy), half-extent h.

    All geometry is in fractions of the side. Returns float64 (R, R) in [0, 1]. The
    oracle reuses this as its shape template, so renderer and oracle share one geometry.
    """
    n = resolution * supersample
    t = (np.arange(n) + 0.5) / n  # sample positions, never on a pixel border
    u = t[None, :] - cx  # x grows to the right (columns)
    v = t[:, None] - cy  # y grows downwards (rows)
    if shape == "circle":
        inside = u * u + v * v <= h * h
    elif shape == "square":
        inside = (np.abs(u) <= h) & (np.abs(v) <= h)
    elif shape == "triangle":
        # Equilateral, apex up, circumradius h, centred on its circumcentre (= centroid):
        # intersection of three half-planes at inradius h/2 along the outward normals.
        inside = ((v <= h / 2) & (-_SQRT3_2 * u - 0.5 * v <= h / 2)
                  & (_SQRT3_2 * u - 0.5 * v <= h / 2))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    inside = np.broadcast_to(inside, (n, n))
    return inside.reshape(resolution, supersample, resolution, supersample).mean(axis=(1, 3))


def render(scene: Scene, resolution: int = 32) -> np.ndarray:
    """Render one scene as uint8 (R, R, 3); deterministic, anti-aliased edges."""
    cx, cy = scene.center()
    alpha = shape_coverage(scene.shape, cx, cy, scene.extent(), resolution)[..., None]
    fg = np.asarray(PALETTE[scene.fg], dtype=np.float64)
    bg = np.asarray(PALETTE[scene.bg], dtype=np.float64)
    return np.rint(bg + alpha * (fg - bg)).astype(np.uint8)


def render_batch(scenes: Sequence[Scene], resolution: int = 32) -> np.ndarray:
    """Render scenes as uint8 (N, R, R, 3)."""
    out = np.empty((len(scenes), resolution, resolution, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        out[i] = render(scene, resolution)
    return out


# ----------------------------------------------------------------------------- captions

def position_phrase(x: str, y: str) -> str:
    """'top left', 'middle right', 'top center', ... and plain 'center' for the middle cell."""
    return "center" if (x, y) == ("center", "middle") else f"{y} {x}"


def caption(scene: Scene) -> str:
    """E.g. 'a small red circle on a blue background, top left'."""
    return (f"a {scene.size} {scene.fg} {scene.shape} on a {scene.bg} background, "
            f"{position_phrase(scene.x, scene.y)}")


_SIZE, _COLOR, _SHAPE = ("|".join(words) for words in (SIZES, COLORS, SHAPES))
_CAPTION_RE = re.compile(
    rf"\b(?P<size>{_SIZE})\s+(?P<fg>{_COLOR})\s+(?P<shape>{_SHAPE})\s+"
    rf"on\s+an?\s+(?P<bg>{_COLOR})\s+background\b(?P<pos>.*)$"
)


def parse_caption(text: str) -> dict[str, str]:
    """Inverse of ``caption``: returns the six discrete factors (``Scene(**d)`` works).

    Position words are optional: a missing x means 'center', a missing y 'middle'.
    Raises ValueError if the text does not follow the caption grammar.
    """
    match = _CAPTION_RE.search(text.strip().lower())
    if match is None:
        raise ValueError(f"unparseable caption: {text!r}")
    words = set(re.findall(r"[a-z]+", match["pos"]))
    xs = [w for w in ("left", "right") if w in words]
    ys = [w for w in ("top", "bottom") if w in words]
    if len(xs) > 1 or len(ys) > 1:
        raise ValueError(f"contradictory position in caption: {text!r}")
    out = {k: match[k] for k in ("shape", "fg", "bg", "size")}
    out["x"] = xs[0] if xs else "center"
    out["y"] = ys[0] if ys else "middle"
    return {name: out[name] for name in FACTOR_NAMES}


# ----------------------------------------------------------------------------- split

def split_of(scene_or_key: Scene | tuple[str, ...]) -> str:
    """'train' or 'heldout' for a scene's discrete factor combination.

    Rule: sha256 of 'shape|fg|bg|size|x|y'; the first 8 hex digits mod 10000 < 1500 means
    held-out. Independent of seeds, Python's hash salt and jitter, so ~15% of the 3024
    factor combinations are never seen in training (a compositional held-out set).
    """
    key = scene_or_key.key() if isinstance(scene_or_key, Scene) else tuple(scene_or_key)
    digest = hashlib.sha256("|".join(key).encode()).hexdigest()
    return "heldout" if int(digest[:8], 16) % 10000 < HELDOUT_FRACTION * 10000 else "train"


def all_combinations() -> list[tuple[str, ...]]:
    """Every valid discrete factor tuple (fg != bg), in ``FACTOR_NAMES`` order."""
    return [(s, f, b, z, x, y) for s, f, b, z, x, y
            in itertools.product(SHAPES, COLORS, COLORS, SIZES, XS, YS) if f != b]


@lru_cache(maxsize=None)
def split_combinations(split: str) -> tuple[tuple[str, ...], ...]:
    """The discrete factor tuples belonging to ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return tuple(k for k in all_combinations() if split_of(k) == split)


def sample_scenes(n: int, seed: int, split: str = "train") -> list[Scene]:
    """``n`` scenes drawn uniformly (with replacement) from ``split``'s combinations,
    with uniform jitter in [-MAX_JITTER, MAX_JITTER]; reproducible for a given seed."""
    return draw_scenes(Scene, split_combinations(split), n, seed)
