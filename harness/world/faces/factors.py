"""Factor vocabulary of the aligned portrait world ("faces"), and the `Face` dataclass.

The stand-in for CelebA-HQ faces (the h-space paper) and the SVD paper's portrait prompts: one centred,
frontal face per image. Its five *attributes* are exactly the h-space paper's Table I attributes (smile,
glasses, age, gender, hat), each binary; its *nuisance* factors (skin tone, hair colour, background colour
and a small jitter of the whole face) are what an edit must preserve.

Every attribute is drawn as a large, flat-coloured part at a fixed place of the aligned face (geometry in
`render.py`, fractions of the image side), so that a global h-space direction can move it, as on aligned
CelebA-HQ, and the oracle can read it back exactly:

- smile: a wide open mouth (smiling) vs a short closed line (neutral);
- glasses: dark lenses with a bridge over both eyes;
- age: old faces carry forehead and cheek wrinkles (darker skin lines) and grey eyebrows;
- gender: women have long hair falling beside the face to the shoulders, men short hair;
- hat: a red hat (crown and brim) on the head.

Palettes are chosen so that every pair of colours that can touch is far apart in RGB (checked in tests).
"""
from __future__ import annotations

from dataclasses import dataclass

from .._scene import JitteredScene

ATTRIBUTES: tuple[str, ...] = ("smile", "glasses", "age", "gender", "hat")
NUISANCE: tuple[str, ...] = ("skin", "hair", "bg")
FACTOR_NAMES: tuple[str, ...] = ATTRIBUTES + NUISANCE

FACTOR_VALUES: dict[str, tuple[str, ...]] = {
    "smile": ("neutral", "smiling"),
    "glasses": ("none", "glasses"),
    "age": ("young", "old"),
    "gender": ("female", "male"),
    "hat": ("none", "hat"),
    "skin": ("light", "medium", "dark"),
    "hair": ("black", "blonde", "auburn"),
    "bg": ("blue", "green", "purple"),
}

SKIN: dict[str, tuple[int, int, int]] = {
    "light": (246, 208, 178), "medium": (204, 150, 108), "dark": (124, 84, 58),
}
HAIR: dict[str, tuple[int, int, int]] = {
    "black": (28, 24, 26), "blonde": (236, 206, 84), "auburn": (184, 84, 24),
}
BACKGROUND: dict[str, tuple[int, int, int]] = {
    "blue": (70, 110, 214), "green": (64, 168, 96), "purple": (150, 96, 196),
}
HAT_RGB = (214, 34, 48)
LENS_RGB = (16, 16, 22)
EYE_RGB = (40, 32, 44)
MOUTH_RGB = (122, 18, 40)
BROW_OLD_RGB = (200, 200, 204)
WRINKLE_SHADE = 0.55  # wrinkle lines are the skin colour times this

MAX_JITTER = 0.02  # |dx|, |dy| bound on the whole face, fraction of the side (0.64 px at 32 px)


@dataclass(frozen=True)
class Face(JitteredScene):
    """One aligned portrait. ``dx``/``dy`` move the whole face (fraction of the side)."""

    smile: str
    glasses: str
    age: str
    gender: str
    hat: str
    skin: str
    hair: str
    bg: str
    dx: float = 0.0
    dy: float = 0.0


Face._factor_names, Face._factor_values, Face._max_jitter = FACTOR_NAMES, FACTOR_VALUES, MAX_JITTER
