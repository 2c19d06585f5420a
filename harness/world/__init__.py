"""Embedded ground-truth world: procedural scenes with known factors and an exact oracle.

    scenes = sample_scenes(100, seed=0, split="heldout")
    images = render_batch(scenes, resolution=32)
    read_scene(images[0]).factors() == scenes[0].factors()
"""

from .factors import (
    COLORS, FACTOR_NAMES, FACTOR_VALUES, MAX_JITTER, MIN_COLOR_SEPARATION, PALETTE, SHAPES,
    SIZE_EXTENT, SIZES, X_ANCHOR, XS, Y_ANCHOR, YS, Scene,
)
from .oracle import OracleResult, factor_matches, read_scene, snap_color
from .render import (
    HELDOUT_FRACTION, SPLITS, all_combinations, caption, parse_caption, position_phrase,
    render, render_batch, sample_scenes, shape_coverage, split_combinations, split_of,
)

__all__ = [
    "COLORS", "FACTOR_NAMES", "FACTOR_VALUES", "MAX_JITTER", "MIN_COLOR_SEPARATION", "PALETTE",
    "SHAPES", "SIZE_EXTENT", "SIZES", "X_ANCHOR", "XS", "Y_ANCHOR", "YS", "Scene",
    "OracleResult", "factor_matches", "read_scene", "snap_color",
    "HELDOUT_FRACTION", "SPLITS", "all_combinations", "caption", "parse_caption",
    "position_phrase", "render", "render_batch", "sample_scenes", "shape_coverage",
    "split_combinations", "split_of",
]
