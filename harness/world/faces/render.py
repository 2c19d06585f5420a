"""Rendering, captions and the train/held-out split of the aligned portrait world.

Geometry is in fractions of the image side (x to the right, y downwards), relative to the face's anchor;
``dx``/``dy`` move everything but the background. Parts are painted back to front on a 4x supersampled grid
and box-filtered, so edges are anti-aliased and a face means the same thing at every resolution.
"""
from __future__ import annotations

import hashlib
import itertools
import re
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

from .._scene import draw_scenes
from .factors import (
    BACKGROUND, BROW_OLD_RGB, EYE_RGB, FACTOR_NAMES, FACTOR_VALUES, HAIR, HAT_RGB, LENS_RGB, MOUTH_RGB, SKIN, WRINKLE_SHADE, Face,
)

SUPERSAMPLE = 4
HELDOUT_FRACTION = 0.15
SPLITS = ("train", "heldout")

# Part geometry (fractions of the side, before jitter). Boxes are (x0, x1, y0, y1). At 32 px every part an
# attribute changes covers >= 20 pixels, so that both the oracle and a small model see it.
FACE_CENTRE, FACE_AXES = (0.5, 0.57), (0.24, 0.30)  # skin ellipse: x 0.26-0.74, y 0.27-0.87
HAIR_CENTRE, HAIR_AXES = (0.5, 0.54), (0.30, 0.35)  # head of hair: y from 0.19
SHORT_HAIR_BOTTOM = 0.46  # men: the hair ellipse above this line
LONG_HAIR_BOXES = ((0.19, 0.32, 0.40, 0.97), (0.68, 0.81, 0.40, 0.97))  # women: hair beside the face
FRINGE_BOTTOM = 0.35  # hair over the top of the face
EYES_X, EYES_Y, EYE_HALF = (0.40, 0.60), 0.52, 0.032
BROW_Y, BROW_HALF_W, BROW_HALF_H = 0.455, 0.065, 0.022
LENS_BOXES = ((0.29, 0.48, 0.465, 0.595), (0.52, 0.71, 0.465, 0.595))
BRIDGE_BOX = (0.48, 0.52, 0.49, 0.53)
WRINKLE_BOXES = ((0.37, 0.63, 0.375, 0.41),  # forehead line
                 (0.325, 0.36, 0.62, 0.78), (0.64, 0.675, 0.62, 0.78))  # cheek (nasolabial) lines
SMILE_CENTRE, SMILE_AXES = (0.5, 0.685), (0.16, 0.125)  # lower half-ellipse: the open, smiling mouth
NEUTRAL_MOUTH_BOX = (0.43, 0.57, 0.73, 0.765)
HAT_BOXES = ((0.28, 0.72, 0.03, 0.26), (0.16, 0.84, 0.24, 0.31))  # crown, brim


def _grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    n = resolution * SUPERSAMPLE
    t = (np.arange(n) + 0.5) / n
    return t[None, :], t[:, None]


def _box(u: np.ndarray, v: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x0, x1, y0, y1 = box
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)


def _ellipse(u: np.ndarray, v: np.ndarray, centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    return ((u - centre[0]) / axes[0]) ** 2 + ((v - centre[1]) / axes[1]) ** 2 <= 1.0


def part_masks(face: Face, resolution: int) -> list[tuple[np.ndarray, tuple[float, float, float]]]:
    """The painted parts, back to front: (supersampled boolean mask, RGB)."""
    u, v = _grid(resolution)
    u, v = u - face.dx, v - face.dy  # moving the face = moving the sample points the other way
    n = resolution * SUPERSAMPLE
    full = lambda m: np.broadcast_to(m, (n, n))  # noqa: E731
    skin = np.asarray(SKIN[face.skin], dtype=np.float64)
    hair = HAIR[face.hair]
    head = _ellipse(u, v, HAIR_CENTRE, HAIR_AXES)
    face_mask = _ellipse(u, v, FACE_CENTRE, FACE_AXES)
    parts: list[tuple[np.ndarray, tuple[float, float, float]]] = []
    if face.gender == "female":
        parts.append((full(head | _box(u, v, LONG_HAIR_BOXES[0]) | _box(u, v, LONG_HAIR_BOXES[1])), hair))
    else:
        parts.append((full(head & (v <= SHORT_HAIR_BOTTOM)), hair))
    parts.append((full(face_mask), tuple(skin)))
    parts.append((full(head & face_mask & (v <= FRINGE_BOTTOM)), hair))
    if face.age == "old":
        lines = np.zeros((n, n), dtype=bool)
        for box in WRINKLE_BOXES:
            lines |= _box(u, v, box)
        parts.append((lines, tuple(skin * WRINKLE_SHADE)))
    brows = np.zeros((n, n), dtype=bool)
    for x in EYES_X:
        brows |= _box(u, v, (x - BROW_HALF_W, x + BROW_HALF_W, BROW_Y - BROW_HALF_H, BROW_Y + BROW_HALF_H))
    parts.append((brows, BROW_OLD_RGB if face.age == "old" else hair))
    eyes = np.zeros((n, n), dtype=bool)
    for x in EYES_X:
        eyes |= _box(u, v, (x - EYE_HALF, x + EYE_HALF, EYES_Y - EYE_HALF, EYES_Y + EYE_HALF))
    parts.append((eyes, EYE_RGB))
    if face.glasses == "glasses":
        parts.append((full(_box(u, v, LENS_BOXES[0]) | _box(u, v, LENS_BOXES[1]) | _box(u, v, BRIDGE_BOX)),
                      LENS_RGB))
    if face.smile == "smiling":
        mouth = _ellipse(u, v, SMILE_CENTRE, SMILE_AXES) & (v >= SMILE_CENTRE[1])
    else:
        mouth = _box(u, v, NEUTRAL_MOUTH_BOX)
    parts.append((full(mouth), MOUTH_RGB))
    if face.hat == "hat":
        parts.append((full(_box(u, v, HAT_BOXES[0]) | _box(u, v, HAT_BOXES[1])), HAT_RGB))
    return parts


def render(face: Face, resolution: int = 32) -> np.ndarray:
    """Render one face as uint8 (R, R, 3); deterministic, anti-aliased edges."""
    n = resolution * SUPERSAMPLE
    canvas = np.empty((n, n, 3), dtype=np.float64)
    canvas[:] = BACKGROUND[face.bg]
    for mask, rgb in part_masks(face, resolution):
        canvas[mask] = rgb
    small = canvas.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.rint(small).astype(np.uint8)


def render_batch(faces: Sequence[Face], resolution: int = 32) -> np.ndarray:
    out = np.empty((len(faces), resolution, resolution, 3), dtype=np.uint8)
    for i, face in enumerate(faces):
        out[i] = render(face, resolution)
    return out


# ----------------------------------------------------------------------------- captions

def subject_phrase(named: Mapping[str, str]) -> str:
    """'smiling old man with glasses and a hat' for the attributes named (any subset); 'person' if no gender."""
    words = []
    if named.get("smile") == "smiling":
        words.append("smiling")
    if "age" in named:
        words.append(named["age"])
    noun = {"female": "woman", "male": "man"}.get(named.get("gender", ""), "person")
    words.append(noun)
    extras = []
    if "glasses" in named:
        extras.append("glasses" if named["glasses"] == "glasses" else "no glasses")
    if "hat" in named:
        extras.append("a hat" if named["hat"] == "hat" else "no hat")
    text = " ".join(words)
    if extras:
        text += " with " + " and ".join(extras)
    if named.get("smile") == "neutral":
        text += ", not smiling"
    return text


def partial_caption(named: Mapping[str, str]) -> str:
    """A caption in the papers' prompt style naming only the factors in ``named`` (any subset)."""
    text = "a photo of " + _article(subject_phrase(named))
    details = []
    if "hair" in named:
        details.append(f"{named['hair']} hair")
    if "skin" in named:
        details.append(f"{named['skin']} skin")
    if "bg" in named:
        details.append(f"{named['bg']} background")
    return text + (", " + ", ".join(details) if details else "")


def caption(face: Face) -> str:
    """E.g. 'a photo of a smiling old man with no glasses and a hat, black hair, light skin, blue background'."""
    return partial_caption(face.factors())


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


_CAPTION_RE = re.compile(
    r"a photo of an? (?P<smiling>smiling )?(?P<age>young |old )?(?P<noun>woman|man|person)"
    r"(?: with (?P<extras>.*?))?(?P<neutral>, not smiling)?"
    r"(?:, (?P<hair>\w+) hair)?(?:, (?P<skin>\w+) skin)?(?:, (?P<bg>\w+) background)?$"
)


def parse_caption(text: str) -> dict[str, str]:
    """Inverse of ``partial_caption``: the factors a caption names (a full caption names all eight)."""
    m = _CAPTION_RE.fullmatch(text.strip().lower())
    if m is None:
        raise ValueError(f"unparseable caption: {text!r}")
    out: dict[str, str] = {}
    if m["smiling"]:
        out["smile"] = "smiling"
    if m["neutral"]:
        out["smile"] = "neutral"
    if m["age"]:
        out["age"] = m["age"].strip()
    if m["noun"] != "person":
        out["gender"] = "female" if m["noun"] == "woman" else "male"
    for extra in (m["extras"] or "").split(" and ") if m["extras"] else []:
        key = {"glasses": ("glasses", "glasses"), "no glasses": ("glasses", "none"),
               "a hat": ("hat", "hat"), "no hat": ("hat", "none")}.get(extra)
        if key is None:
            raise ValueError(f"unparseable caption detail {extra!r} in {text!r}")
        out[key[0]] = key[1]
    for name in ("hair", "skin", "bg"):
        if m[name]:
            if m[name] not in FACTOR_VALUES[name]:
                raise ValueError(f"unknown {name} {m[name]!r} in {text!r}")
            out[name] = m[name]
    return {name: out[name] for name in FACTOR_NAMES if name in out}


# ----------------------------------------------------------------------------- split

def split_of(face_or_key: Face | tuple[str, ...]) -> str:
    """'train' or 'heldout' for a face's discrete factor combination: sha256 of the '|'-joined factors,
    first 8 hex digits mod 10000 < 1500 is held out (independent of seeds, hash salt and jitter)."""
    key = face_or_key.key() if isinstance(face_or_key, Face) else tuple(face_or_key)
    digest = hashlib.sha256(("faces|" + "|".join(key)).encode()).hexdigest()
    return "heldout" if int(digest[:8], 16) % 10000 < HELDOUT_FRACTION * 10000 else "train"


def all_combinations() -> list[tuple[str, ...]]:
    return list(itertools.product(*(FACTOR_VALUES[n] for n in FACTOR_NAMES)))


@lru_cache(maxsize=None)
def split_combinations(split: str) -> tuple[tuple[str, ...], ...]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return tuple(k for k in all_combinations() if split_of(k) == split)


def sample_faces(n: int, seed: int, split: str = "train") -> list[Face]:
    """``n`` faces drawn uniformly (with replacement) from ``split``'s combinations, uniform jitter."""
    return draw_scenes(Face, split_combinations(split), n, seed)
