"""The world protocol and registry: every procedural world the harness can train models on and score exactly.

A world is one module that builds a `World` and registers it by name (`register_world`); the training
scripts (`--world`), `harness world check --world` and the oracle metric (a suite's `world:`) look it up
with `get_world(name)`. Nothing else needs to know which worlds exist.

A world has discrete factors with finite value sets; a scene is a frozen dataclass whose ``factors()``
returns them. Captions name factors in *groups* (the shapes world names x and y together as one
"position"); a group's value is a label string (``"left/top"`` for a two-factor group).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np


class Reading(Protocol):
    """What a world's oracle read from an image."""

    # Properties, i.e. read-only: the oracles return frozen dataclasses, which a settable attribute would exclude.
    @property
    def valid(self) -> bool: ...

    @property
    def reason(self) -> str: ...

    def factors(self) -> Mapping[str, str | None]: ...


@dataclass(frozen=True)
class WorldChecks:
    """Bars of `harness world check` (None: every caption group / every attribute) and the DDPM's sampler there."""

    zero_shot_groups: tuple[str, ...] | None = None
    zero_shot_bar: float = 0.95
    prompted_factors: tuple[str, ...] | None = None
    prompted_bar: float = 0.9
    valid_bar: float = 0.90
    tv_bar: float = 0.1
    fid_ratio_bar: float = 0.2
    ddpm_steps: int = 50
    ddpm_eta: float = 0.0


@dataclass(frozen=True)
class World:
    name: str
    description: str
    factor_names: tuple[str, ...]
    factor_values: Mapping[str, tuple[str, ...]]
    resolution: int
    """Native resolution of the world's models and checks."""
    sample: Callable[[int, int, str], list[Any]]
    """(n, seed, split) -> n scenes, uniform over the split's factor combinations, random jitter."""
    render_batch: Callable[[Sequence[Any], int], np.ndarray]
    """(scenes, resolution) -> uint8 (N, R, R, 3)."""
    caption: Callable[[Any], str]
    parse_caption: Callable[[str], dict[str, str]]
    read: Callable[[np.ndarray], Reading]
    """The exact oracle: a uint8 (R, R, 3) image -> Reading."""
    split_combinations: Callable[[str], tuple[tuple[str, ...], ...]]
    make_scene: Callable[[tuple[str, ...], np.random.Generator], Any]
    """A scene of the given factor tuple (``factor_names`` order) with random jitter."""
    groups: Mapping[str, tuple[str, ...]]
    """Caption groups: name -> the factors it names together."""
    partial_caption: Callable[[Mapping[str, str]], str]
    """A caption naming only some groups ({group: label})."""
    zero_shot_prompts: Mapping[str, Mapping[str, str]]
    """One CLIP prompt per group value: {group: {label: prompt}}."""
    attributes: tuple[str, ...] = field(default=())
    """The factors edits target (the rest are nuisance that edits must preserve); all factors if empty."""
    checks: WorldChecks = field(default_factory=lambda: WorldChecks())
    """What `harness world check --world NAME` holds the world's models to."""

    def group_label(self, factors: Mapping[str, str], group: str) -> str:
        return "/".join(str(factors[f]) for f in self.groups[group])

    def group_labels(self, group: str) -> tuple[str, ...]:
        """Every label of a group, in factor-value order."""
        import itertools

        return tuple("/".join(v) for v in itertools.product(*(self.factor_values[f] for f in self.groups[group])))

    def with_group(self, factors: Mapping[str, str], group: str, label: str) -> dict[str, str]:
        out = dict(factors)
        for f, v in zip(self.groups[group], label.split("/")):
            out[f] = v
        return out

    def render(self, scene: Any, resolution: int | None = None) -> np.ndarray:
        return self.render_batch([scene], resolution or self.resolution)[0]


_WORLDS: dict[str, World] = {}


def register_world(world: World) -> World:
    if world.name in _WORLDS and _WORLDS[world.name] is not world:
        raise ValueError(f"world {world.name!r} is registered twice")
    _WORLDS[world.name] = world
    return world


def _load_builtin() -> None:
    from . import faces_world, shapes_world  # noqa: F401  (each registers itself)


def get_world(name: str) -> World:
    _load_builtin()
    if name not in _WORLDS:
        raise KeyError(f"unknown world {name!r}; known: {sorted(_WORLDS)}")
    return _WORLDS[name]


def world_names() -> list[str]:
    _load_builtin()
    return sorted(_WORLDS)
