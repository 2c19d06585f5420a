"""Oracle of the aligned portrait world: read a face's factors back from an image, by analysis by synthesis.

The renderer is known exactly, so the oracle explains the image with it:

  1. colours: background = median of the 1-px border, skin = median of two cheek patches, each snapped to its
     palette (and refused beyond SNAP_TOL); a first hair colour from the temples (hair beside the forehead,
     visible whatever the attributes);
  2. a first guess of every attribute from the share of its region near its colour (hat red in the crown
     region, hair beside the shoulders, dark lenses, the open mouth, wrinkles and grey eyebrows);
  3. the jitter (dx, dy) that best explains the image, by a coarse-to-fine grid search;
  4. every attribute decided by comparing the two renders that differ only in it: with A = the render with
     the attribute as read and B = with it flipped, the statistic
         t = (|x - B|^2 - |x - A|^2) / |A - B|^2
     is +1 for a clean render of A, -1 for one of B and 0 halfway (it is the position of x's projection on
     the segment A-B). Attributes are swept twice (a flip can change another's evidence, e.g. the hat).

A reading is valid when background and skin snap within SNAP_TOL, every |t| >= MIN_MARGIN (the attribute is
visibly one or the other) and the best render explains the image to an RMS residual below MAX_RESIDUAL
(0..255 units; it is a face of this world, not something else). ``margins`` holds each attribute's t.
Works at any resolution (regions are fractions of the side).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from .factors import (
    ATTRIBUTES, BACKGROUND, BROW_OLD_RGB, EYE_RGB, FACTOR_NAMES, FACTOR_VALUES, HAIR, HAT_RGB, LENS_RGB,
    MAX_JITTER, MOUTH_RGB, SKIN, WRINKLE_SHADE, Face,
)
from .render import BROW_HALF_H, BROW_HALF_W, BROW_Y, EYES_X, LENS_BOXES, WRINKLE_BOXES, render

SNAP_TOL = 60.0  # a region's median colour must lie this close to a palette entry
NEAR_TOL = 55.0  # first guesses: a pixel is "near" a part's colour within this distance
MIN_MARGIN = 0.3  # |t| below this: the attribute is between its two renders, unreadable
MAX_RESIDUAL = 40.0  # RMS (0..255) of image minus best render; clean renders with noise sigma 20 give ~20

# Regions (x0, x1, y0, y1), fractions of the side, placed >= MAX_JITTER inside the part they read.
CHEEKS = ((0.41, 0.47, 0.625, 0.665), (0.53, 0.59, 0.625, 0.665))
TEMPLES = ((0.255, 0.295, 0.33, 0.43), (0.705, 0.745, 0.33, 0.43))
GUESS_REGIONS: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "hat": ((0.32, 0.68, 0.06, 0.22),),
    "gender": ((0.215, 0.25, 0.66, 0.94), (0.75, 0.785, 0.66, 0.94)),
    "glasses": LENS_BOXES,
    "smile": ((0.36, 0.64, 0.69, 0.80),),
    "wrinkles": WRINKLE_BOXES,
    "brows": tuple((x - BROW_HALF_W, x + BROW_HALF_W, BROW_Y - BROW_HALF_H, BROW_Y + BROW_HALF_H) for x in EYES_X),
}
GUESS_THRESHOLDS = {"hat": 0.5, "gender": 0.5, "glasses": 0.55, "smile": 0.48, "age": 0.4}
POSITIVE = {"smile": "smiling", "glasses": "glasses", "age": "old", "gender": "female", "hat": "hat"}


def _other(name: str, value: str) -> str:
    return next(v for v in FACTOR_VALUES[name] if v != value)


@dataclass(frozen=True)
class FaceReading:
    valid: bool
    reason: str = ""
    values: dict[str, str | None] = field(default_factory=dict)
    margins: dict[str, float] = field(default_factory=dict)
    """Per attribute: t in [-1, 1]-ish; +1 = clean evidence for the value read."""
    residual: float = float("nan")
    jitter: tuple[float, float] = (float("nan"), float("nan"))

    def factors(self) -> dict[str, str | None]:
        return {name: self.values.get(name) for name in FACTOR_NAMES}

    def __getattr__(self, name: str):  # reading.smile etc., like the shapes oracle's fields
        if name in FACTOR_NAMES:
            return self.values.get(name)
        raise AttributeError(name)


def _snap(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> tuple[str, float]:
    names = list(palette)
    d = np.linalg.norm(np.asarray([palette[n] for n in names], dtype=np.float64) - rgb, axis=1)
    i = int(np.argmin(d))
    return names[i], float(d[i])


def _pixels(img: np.ndarray, boxes) -> np.ndarray:
    """Pixels whose centres lie in any of the boxes, as (N, 3)."""
    res = img.shape[0]
    c = (np.arange(res) + 0.5) / res
    u, v = c[None, :], c[:, None]
    inside = np.zeros((res, res), dtype=bool)
    for x0, x1, y0, y1 in boxes:
        inside |= (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)
    return img[inside]


def _near(px: np.ndarray, *colours) -> float:
    """Share of pixels within NEAR_TOL of any of the colours."""
    if len(px) == 0:
        return 0.0
    hit = np.zeros(len(px), dtype=bool)
    for c in colours:
        hit |= np.linalg.norm(px - np.asarray(c, dtype=np.float64), axis=1) < NEAR_TOL
    return float(hit.mean())


def _guess(img: np.ndarray, skin: str, hair: str) -> dict[str, str]:
    skin_rgb = np.asarray(SKIN[skin], dtype=np.float64)
    scores = {
        "hat": _near(_pixels(img, GUESS_REGIONS["hat"]), HAT_RGB),
        "gender": _near(_pixels(img, GUESS_REGIONS["gender"]), HAIR[hair]),
        "glasses": _near(_pixels(img, GUESS_REGIONS["glasses"]), LENS_RGB, EYE_RGB),
        "smile": _near(_pixels(img, GUESS_REGIONS["smile"]), MOUTH_RGB),
        "age": 0.5 * (_near(_pixels(img, GUESS_REGIONS["wrinkles"]), skin_rgb * WRINKLE_SHADE)
                      + _near(_pixels(img, GUESS_REGIONS["brows"]), BROW_OLD_RGB)),
    }
    return {a: POSITIVE[a] if scores[a] >= GUESS_THRESHOLDS[a] else _other(a, POSITIVE[a]) for a in ATTRIBUTES}


BLUR_SIGMAS = (0.0, 0.5, 0.8, 1.1)  # pixels at 32 px: generated images are soft; templates are blurred alike


@lru_cache(maxsize=4096)
def _template(face: Face, resolution: int, sigma: float) -> np.ndarray:
    out = render(face, resolution).astype(np.float64)
    if sigma:
        out = ndimage.gaussian_filter(out, (sigma * resolution / 32, sigma * resolution / 32, 0), mode="nearest")
    out.setflags(write=False)
    return out


def _sq_error(img: np.ndarray, face: Face, sigma: float) -> float:
    return float(((img - _template(face, img.shape[0], sigma)) ** 2).sum())


def _fit_jitter(img: np.ndarray, face: Face, sigma: float) -> Face:
    best = face
    for step in (MAX_JITTER, MAX_JITTER / 2, MAX_JITTER / 4, MAX_JITTER / 8):
        cx, cy = best.dx, best.dy
        candidates = [(float(np.clip(cx + i * step, -MAX_JITTER, MAX_JITTER)),
                       float(np.clip(cy + j * step, -MAX_JITTER, MAX_JITTER))) for i in (-1, 0, 1) for j in (-1, 0, 1)]
        best = min((replace(best, dx=dx, dy=dy) for dx, dy in dict.fromkeys(candidates)),
                   key=lambda f: _sq_error(img, f, sigma))
    return best


def _with(face: Face, name: str, value: str) -> Face:
    """`face` with factor `name` set to `value`."""
    change: dict[str, Any] = {name: value}
    return replace(face, **change)


def _fit(img: np.ndarray, face: Face) -> tuple[Face, float]:
    """Coordinate descent on (jitter, blur, every factor), twice: the render that best explains the image."""
    sigma = 0.0
    for _round in range(2):
        face = _fit_jitter(img, face, sigma)
        sigma = min(BLUR_SIGMAS, key=lambda s: _sq_error(img, face, s))
        for name in FACTOR_NAMES:
            face = min((_with(face, name, v) for v in FACTOR_VALUES[name]), key=lambda f: _sq_error(img, f, sigma))
    return _fit_jitter(img, face, sigma), sigma


def read_face(image: np.ndarray) -> FaceReading:
    """Read a square uint8 (R, R, 3) portrait (floats in [0, 1] also accepted)."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] != img.shape[1]:
        raise ValueError(f"expected a square (R, R, 3) image, got shape {img.shape}")
    img = img.astype(np.float64) * (255.0 if np.issubdtype(img.dtype, np.floating) else 1.0)
    values: dict[str, str | None] = {}

    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    bg, d = _snap(np.median(border, axis=0), BACKGROUND)
    values["bg"] = bg
    if d > SNAP_TOL:
        return FaceReading(False, f"border colour {np.median(border, axis=0).round().tolist()} is no background")
    skin_rgb = np.median(_pixels(img, CHEEKS), axis=0)
    skin, d = _snap(skin_rgb, SKIN)
    values["skin"] = skin
    if d > SNAP_TOL:
        return FaceReading(False, f"no face: cheek colour {skin_rgb.round().tolist()} is no skin tone", values)
    # The temples are a few pixels wide: their median only seeds the fit, which decides the hair colour
    # (a blurred temple mixes with skin and background, measured: 6 of 1,000 blurred noisy renders).
    hair, _ = _snap(np.median(_pixels(img, TEMPLES), axis=0), HAIR)
    values["hair"] = hair

    guess: dict[str, Any] = _guess(img, skin, hair)
    face = Face(**guess, skin=skin, hair=hair, bg=bg)
    face, sigma = _fit(img, face)
    margins: dict[str, float] = {}
    for name in ATTRIBUTES:
        flipped = _with(face, name, _other(name, getattr(face, name)))
        gap = float(((_template(face, img.shape[0], sigma) - _template(flipped, img.shape[0], sigma)) ** 2).sum())
        margins[name] = (_sq_error(img, flipped, sigma) - _sq_error(img, face, sigma)) / max(gap, 1e-9)
    values.update(face.factors())
    residual = float(np.sqrt(_sq_error(img, face, sigma) / img.size))
    jitter = (face.dx, face.dy)
    unclear = [f"{n} {margins[n]:.2f}" for n in ATTRIBUTES if margins[n] < MIN_MARGIN]
    if unclear:
        return FaceReading(False, "ambiguous " + ", ".join(unclear), values, margins, residual, jitter)
    if residual > MAX_RESIDUAL:
        return FaceReading(False, f"no clean face: RMS residual {residual:.1f} > {MAX_RESIDUAL}", values, margins,
                           residual, jitter)
    return FaceReading(True, "", values, margins, residual, jitter)
