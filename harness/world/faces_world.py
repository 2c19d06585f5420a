"""The aligned portrait world (harness/world/faces) as a registered `World`."""
from __future__ import annotations

import numpy as np

from .faces.factors import ATTRIBUTES, FACTOR_NAMES, FACTOR_VALUES, MAX_JITTER, Face
from .faces.render import caption, parse_caption, partial_caption, render_batch, sample_faces, split_combinations
from .registry import World, WorldChecks, register_world


def _read(image: np.ndarray):
    from .faces.oracle import read_face  # scipy: loaded only where faces are scored

    return read_face(image)


def _make_face(key: tuple[str, ...], rng: np.random.Generator) -> Face:
    dx, dy = rng.uniform(-MAX_JITTER, MAX_JITTER, size=2)
    return Face.from_key(key, float(dx), float(dy))


# Zero-shot prompts in the papers' style; each names one factor's value only.
ZERO_SHOT_PROMPTS = {
    name: {value: partial_caption({name: value}) for value in FACTOR_VALUES[name]} for name in FACTOR_NAMES
}

def _sample(n: int, seed: int, split: str = "train") -> list[Face]:
    return sample_faces(n, seed=seed, split=split)


FACES_WORLD = register_world(World(
    name="faces",
    description="one aligned portrait: smile, glasses, age, gender, hat (the h-space paper's Table I) "
                "with skin tone, hair colour, background and jitter as nuisance",
    factor_names=FACTOR_NAMES, factor_values=FACTOR_VALUES, resolution=32,
    sample=_sample,
    render_batch=render_batch, caption=caption, parse_caption=parse_caption, read=_read,
    split_combinations=split_combinations, make_scene=_make_face, groups={n: (n,) for n in FACTOR_NAMES},
    partial_caption=partial_caption, zero_shot_prompts=ZERO_SHOT_PROMPTS, attributes=ATTRIBUTES,
    # issue 15's bars: the editing methods run deterministic DDIM, so the DDPM is held to 50 steps at eta 0
    checks=WorldChecks(zero_shot_groups=ATTRIBUTES, prompted_factors=ATTRIBUTES, prompted_bar=0.9,
                       ddpm_steps=50, ddpm_eta=0.0),
))
