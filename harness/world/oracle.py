"""Oracle: recover a scene's discrete factors from an image.

Pipeline (all deterministic, numpy + scipy.ndimage):
  1. background = median colour of the 1-px border, which must dominate the border and
     snap to the palette;
  2. foreground mask = pixels farther than half the palette separation from it; connected
     components (8-connectivity) below ``SPECKLE_FRACTION`` of the smallest object are
     ignored as speckle, and exactly one component must remain;
  3. foreground colour = median of the component's pixels farthest from bg, snapped (or,
     if faded by blur, the palette colour whose bg->colour segment passes through it);
  4. soft alpha = projection of each pixel on the bg->fg colour line (so anti-aliased or
     blurred edges count fractionally) gives area (which must be plausible) and centroid;
     pixels far off that line mean the object is not one colour;
  5. shape = the renderer's template (same centroid, extent fitted from the area) with the
     best soft IoU; size = that fitted extent vs the midpoint of the two sizes; x / y = the
     centroid vs the midpoints between anchors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .factors import (
    FACTOR_NAMES, MIN_COLOR_SEPARATION, PALETTE, SHAPES, SIZE_EXTENT, X_ANCHOR, Y_ANCHOR, Scene,
)
from .render import shape_coverage

# Colour distances are Euclidean in 0..255 RGB. Snapping accepts up to 0.4 of the palette
# separation (so the nearest entry is unambiguous); the mask threshold is half of it.
COLOR_TOL = 0.4 * MIN_COLOR_SEPARATION
FG_THRESHOLD = 0.5 * MIN_COLOR_SEPARATION
BORDER_DOMINANCE = 0.5  # share of border pixels that must be near the background colour
PURITY = 0.8  # share of the object's pixels that must lie near the bg -> fg colour line
MIN_SHAPE_IOU = 0.75  # clean renders score > 0.98, noisy/blurred ones > 0.8; merged blobs lower
# Templates are also compared blurred (Gaussian sigma in pixels at 32 px, scaled with the
# resolution): generated images are soft, and blur turns a small square into a "circle".
BLUR_SIGMAS = (0.0, 0.5, 1.0, 1.5)
# Fallback colour snap for blurred small objects whose core never reaches full colour:
# the core colour must lie on the segment bg -> palette colour, at least LINE_MIN_T along.
LINE_TOL = 0.25 * MIN_COLOR_SEPARATION
LINE_MIN_T = 0.5

# Area of each shape in units of h^2 (h = half-extent): pi, 4, 3*sqrt(3)/4.
SHAPE_AREA = {"circle": math.pi, "square": 4.0, "triangle": 3.0 * math.sqrt(3.0) / 4.0}
_MIN_AREA = min(SHAPE_AREA.values()) * min(SIZE_EXTENT.values()) ** 2  # fraction of R^2
_MAX_AREA = max(SHAPE_AREA.values()) * max(SIZE_EXTENT.values()) ** 2
SPECKLE_FRACTION = 0.25  # components < 0.25 * smallest object area are noise
AREA_RANGE = (0.5 * _MIN_AREA, 1.6 * _MAX_AREA)  # plausible object area, fraction of R^2
SIZE_THRESHOLD = float(np.mean(list(SIZE_EXTENT.values())))


def _cuts(anchor: dict[str, float]) -> list[tuple[float, str]]:
    """Midpoints between consecutive anchors, paired with the value below each cut."""
    items = sorted(anchor.items(), key=lambda kv: kv[1])
    cuts = [((a[1] + b[1]) / 2, a[0]) for a, b in zip(items, items[1:])]
    return cuts + [(math.inf, items[-1][0])]


_X_CUTS, _Y_CUTS = _cuts(X_ANCHOR), _cuts(Y_ANCHOR)
_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], dtype=np.float64)


@dataclass(frozen=True)
class OracleResult:
    """What the oracle read. Discrete fields are None where it could not tell (then
    ``valid`` is False and ``reason`` says why). ``area`` is in pixels (soft count),
    ``centroid`` is (x, y) in pixels with the image spanning [0, W] x [0, H],
    ``extent`` the fitted half-extent as a fraction of the side."""

    valid: bool
    reason: str = ""
    shape: str | None = None
    fg: str | None = None
    bg: str | None = None
    size: str | None = None
    x: str | None = None
    y: str | None = None
    area: float = 0.0
    centroid: tuple[float, float] = (math.nan, math.nan)
    extent: float = math.nan
    shape_iou: float = math.nan

    def factors(self) -> dict[str, str | None]:
        return {name: getattr(self, name) for name in FACTOR_NAMES}


def snap_color(rgb: np.ndarray) -> tuple[str, float]:
    """Nearest palette colour name and its distance (0..255 units)."""
    d = np.linalg.norm(_RGB - np.asarray(rgb, dtype=np.float64), axis=1)
    i = int(np.argmin(d))
    return _NAMES[i], float(d[i])


def _snap_on_line(rgb: np.ndarray, bg_rgb: np.ndarray, bg: str) -> tuple[str, float] | None:
    """Palette colour c whose segment bg -> c passes within LINE_TOL of ``rgb`` (with the
    projection at least LINE_MIN_T along it and no rival close to it); else None."""
    cand = []
    for name, c in zip(_NAMES, _RGB):
        if name == bg:
            continue
        axis = c - bg_rgb
        t = float(np.clip((rgb - bg_rgb) @ axis / (axis @ axis), 0.0, 1.0))
        cand.append((float(np.linalg.norm(bg_rgb + t * axis - rgb)), t, name))
    cand.sort()
    (d, t, name), d2 = cand[0], cand[1][0]
    return (name, d) if d <= LINE_TOL and t >= LINE_MIN_T and d2 > 2 * d else None


def _cell(value: float, cuts: list[tuple[float, str]]) -> str:
    return next(name for cut, name in cuts if value < cut)


def read_scene(image: np.ndarray) -> OracleResult:
    """Recover factors from a square uint8 (H, W, 3) image (floats in [0, 1] also accepted)."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] != img.shape[1]:
        raise ValueError(f"expected a square (R, R, 3) image, got shape {img.shape}")
    img = img.astype(np.float64) * (255.0 if np.issubdtype(img.dtype, np.floating) else 1.0)
    res = img.shape[0]

    # 1. background from the border
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    near = np.linalg.norm(border - np.median(border, axis=0), axis=1) < COLOR_TOL
    if near.mean() < BORDER_DOMINANCE:
        return OracleResult(False, "no dominant border colour")
    bg_rgb = border[near].mean(axis=0)
    bg, d = snap_color(bg_rgb)
    if d > COLOR_TOL:
        return OracleResult(False, f"background colour {bg_rgb.round().tolist()} not in palette")

    # 2. exactly one foreground component, speckle ignored
    dist = np.linalg.norm(img - bg_rgb, axis=2)
    labels, _ = ndimage.label(dist > FG_THRESHOLD, structure=np.ones((3, 3), dtype=bool))
    counts = np.bincount(labels.ravel())[1:]
    objects = np.flatnonzero(counts >= SPECKLE_FRACTION * _MIN_AREA * res * res) + 1
    if len(objects) == 0:
        return OracleResult(False, "no foreground object", bg=bg)
    if len(objects) > 1:
        return OracleResult(False, f"{len(objects)} foreground objects", bg=bg)
    comp = labels == objects[0]

    # 3. foreground colour from the pixels farthest from bg (edge pixels are mixed with bg;
    # the 95th percentile, not the max, so one noisy pixel does not decide)
    core = comp & (dist >= 0.9 * np.percentile(dist[comp], 95))
    fg_rgb = np.median(img[core], axis=0)
    fg, d = snap_color(fg_rgb)
    fg_ref = fg_rgb  # alpha reference: the observed colour, robust to colour shifts
    if d > COLOR_TOL and (hit := _snap_on_line(fg_rgb, bg_rgb, bg)) is not None:
        fg = hit[0]  # faded by blur: the true colour, not the faded one, gives alpha
        fg_ref, d = np.asarray(PALETTE[fg], dtype=np.float64), hit[1]
    if d > COLOR_TOL:
        return OracleResult(
            False, f"foreground colour {fg_rgb.round().tolist()} not in palette", bg=bg)
    if fg == bg:
        return OracleResult(False, "foreground snaps to the background colour", bg=bg)

    # 4. soft alpha = position along the bg -> fg colour line (edges are mixtures of the
    # two); the object is one colour if its pixels lie near that line
    axis = fg_ref - bg_rgb
    t = np.maximum((img - bg_rgb) @ axis / (axis @ axis), 0.0)
    off_line = np.linalg.norm(img - bg_rgb - t[..., None] * axis, axis=2)
    if (off_line[comp] < COLOR_TOL).mean() < PURITY:
        return OracleResult(False, "object is not a single colour", fg=fg, bg=bg)
    region = ndimage.binary_dilation(comp, iterations=max(2, round(3 * res / 32)))
    alpha = np.minimum(t, 1.0) * region
    area = float(alpha.sum())
    # judged on the soft area: blur shrinks the hard mask of a small object, not its alpha sum
    if not AREA_RANGE[0] <= area / res**2 <= AREA_RANGE[1]:
        return OracleResult(
            False, f"object area {area / res**2:.4f} of the image is implausible", fg=fg, bg=bg)
    centre = (np.arange(res) + 0.5)
    cx = float((alpha.sum(axis=0) * centre).sum() / area)
    cy = float((alpha.sum(axis=1) * centre).sum() / area)

    # 5. shape by template IoU, then size and position
    best = ("", -1.0, 0.0)
    for shape in SHAPES:
        h = math.sqrt(area / (SHAPE_AREA[shape] * res * res))
        sharp = shape_coverage(shape, cx / res, cy / res, h, res)
        for sigma in BLUR_SIGMAS:
            tmpl = (ndimage.gaussian_filter(sharp, sigma * res / 32, mode="constant")
                    if sigma else sharp)
            iou = float(np.minimum(alpha, tmpl).sum() / np.maximum(alpha, tmpl).sum())
            if iou > best[1]:
                best = (shape, iou, h)
    shape, iou, h = best
    common: dict[str, Any] = dict(fg=fg, bg=bg, area=area, centroid=(cx, cy), extent=h, shape_iou=iou)
    if iou < MIN_SHAPE_IOU:
        return OracleResult(
            False, f"object matches no shape template (best IoU {iou:.2f})", **common)
    return OracleResult(
        True, "", shape=shape, size="large" if h >= SIZE_THRESHOLD else "small",
        x=_cell(cx / res, _X_CUTS), y=_cell(cy / res, _Y_CUTS), **common,
    )


def factor_matches(scene: Scene, result: OracleResult) -> dict[str, bool]:
    """Per-factor correctness of an oracle reading against the true scene
    (an invalid reading counts as wrong on every factor)."""
    return {name: result.valid and getattr(result, name) == getattr(scene, name)
            for name in FACTOR_NAMES}
