"""The aligned portrait world: palette, captions, split and the exact oracle (checked against the true factors)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from harness.world.faces.factors import (
    ATTRIBUTES, BACKGROUND, FACTOR_NAMES, FACTOR_VALUES, HAIR, HAT_RGB, SKIN, Face,
)
from harness.world.faces.oracle import read_face
from harness.world.faces.render import (
    HELDOUT_FRACTION, all_combinations, caption, parse_caption, partial_caption, render, render_batch, sample_faces,
    split_combinations, split_of,
)
from harness.world.registry import get_world, world_names


def test_colours_that_touch_are_far_apart() -> None:
    # skin borders hair, background and the hat; hair borders the background and the hat
    pairs = [(a, b) for a in SKIN.values() for b in [*HAIR.values(), *BACKGROUND.values(), HAT_RGB]]
    pairs += [(a, b) for a in HAIR.values() for b in [*BACKGROUND.values(), HAT_RGB]]
    pairs += [(a, b) for table in (SKIN, HAIR, BACKGROUND) for a, b in itertools.combinations(table.values(), 2)]
    dist = min(np.linalg.norm(np.subtract(a, b)) for a, b in pairs)
    assert dist >= 60, dist


def test_captions_round_trip_and_partial_captions_name_only_what_they_say() -> None:
    for face in sample_faces(300, seed=3):
        assert parse_caption(caption(face)) == face.factors()
    rng = np.random.default_rng(0)
    for face in sample_faces(200, seed=4):
        named = {k: v for k, v in face.factors().items() if rng.random() < 0.4}
        assert parse_caption(partial_caption(named)) == named, partial_caption(named)
    assert caption(Face("smiling", "glasses", "old", "male", "hat", "light", "black", "blue")) == (
        "a photo of a smiling old man with glasses and a hat, black hair, light skin, blue background")
    with pytest.raises(ValueError):
        parse_caption("a small red circle on a blue background, top left")


def test_split_is_fixed_disjoint_and_about_the_held_out_fraction() -> None:
    train, held = set(split_combinations("train")), set(split_combinations("heldout"))
    assert not train & held and len(train) + len(held) == len(all_combinations()) == 2**5 * 27
    assert abs(len(held) / len(all_combinations()) - HELDOUT_FRACTION) < 0.03
    assert all(split_of(f) == "heldout" for f in sample_faces(50, seed=1, split="heldout"))
    # every attribute value occurs in both splits, so held-out faces are new combinations, not new values
    for split in (train, held):
        for i, name in enumerate(FACTOR_NAMES):
            assert {k[i] for k in split} == set(FACTOR_VALUES[name])


def test_render_is_deterministic_and_attributes_change_their_own_region() -> None:
    base = Face("neutral", "none", "young", "male", "none", "medium", "black", "green")
    image = render(base)
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    assert np.array_equal(image, render(base))
    for name in ATTRIBUTES:
        other = next(v for v in FACTOR_VALUES[name] if v != getattr(base, name))
        changed = (render(Face(**{**base.factors(), name: other})) != image).any(axis=2).sum()
        assert changed >= 20, f"{name} changes only {changed} pixels at 32 px"


@pytest.mark.parametrize("noise, blur", [(0.0, 0.0), (10.0, 0.0), (20.0, 0.0), (0.0, 0.7), (10.0, 0.7)])
def test_oracle_reads_held_out_renders_exactly(noise: float, blur: float) -> None:
    faces = sample_faces(60, seed=11, split="heldout")
    images = render_batch(faces).astype(np.float64)
    if blur:
        images = ndimage.gaussian_filter(images, (0, blur, blur, 0))
    images = np.clip(images + np.random.default_rng(0).normal(0, noise, images.shape), 0, 255).round()
    for face, image in zip(faces, images.astype(np.uint8)):
        reading = read_face(image)
        assert reading.valid, (face, reading.reason)
        assert reading.factors() == face.factors(), (face, reading.factors())
        assert abs(reading.jitter[0] - face.dx) <= 0.01 and abs(reading.jitter[1] - face.dy) <= 0.01


def test_oracle_refuses_what_is_not_a_clean_face() -> None:
    blank = np.zeros((32, 32, 3), dtype=np.uint8)
    blank[:] = BACKGROUND["blue"]
    assert not read_face(blank).valid
    assert not read_face(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).valid
    assert not read_face(get_world("shapes").render(get_world("shapes").sample(1, 0, "train")[0])).valid
    # halfway between smiling and neutral: the attribute is unreadable, not guessed
    a = Face("smiling", "none", "young", "female", "none", "light", "blonde", "purple")
    b = Face(**{**a.factors(), "smile": "neutral"})
    blend = ((render(a).astype(np.float64) + render(b)) / 2).round().astype(np.uint8)
    reading = read_face(blend)
    assert not reading.valid and "smile" in reading.reason


def test_oracle_works_at_other_resolutions() -> None:
    for face in sample_faces(10, seed=5, split="heldout"):
        assert read_face(render(face, 64)).factors() == face.factors()


def test_registry_knows_both_worlds_and_names_the_known_ones() -> None:
    assert {"faces", "shapes"} <= set(world_names())
    faces = get_world("faces")
    assert faces.attributes == ATTRIBUTES and faces.factor_names == FACTOR_NAMES
    face = faces.sample(1, 0, "train")[0]
    assert faces.read(faces.render(face)).factors() == face.factors()
    with pytest.raises(KeyError, match="faces"):
        get_world("moons")
