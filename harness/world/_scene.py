"""What every world's scene dataclass shares: discrete factors checked against their values, a small jitter."""
from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TypeVar

import numpy as np


class JitteredScene:
    """Mixin for a frozen scene dataclass with one str field per discrete factor plus ``dx``/``dy`` jitter.

    Subclasses set ``_factor_names``, ``_factor_values`` and ``_max_jitter`` as plain class attributes."""

    _factor_names: tuple[str, ...] = ()
    _factor_values: Mapping[str, tuple[str, ...]] = {}
    _max_jitter: float = 0.0
    dx: float
    dy: float

    if TYPE_CHECKING:  # the subclasses are dataclasses; their generated __init__ takes the fields by name
        def __init__(self, **fields: Any) -> None: ...

    @classmethod
    def from_key(cls: type[S], key: Sequence[str], dx: float = 0.0, dy: float = 0.0) -> S:
        """The scene whose discrete factors are `key` (in factor order, as `key()` returns) with jitter (dx, dy)."""
        factors: dict[str, Any] = dict(zip(cls._factor_names, key, strict=True))
        return cls(**factors, dx=dx, dy=dy)

    def __post_init__(self) -> None:
        for name in self._factor_names:
            value = getattr(self, name)
            if value not in self._factor_values[name]:
                raise ValueError(f"{name}={value!r} not in {self._factor_values[name]}")
        if abs(self.dx) > self._max_jitter or abs(self.dy) > self._max_jitter:
            raise ValueError(f"jitter ({self.dx}, {self.dy}) exceeds MAX_JITTER={self._max_jitter}")

    def factors(self) -> dict[str, str]:
        """The discrete factors only (what the oracle recovers)."""
        return {name: getattr(self, name) for name in self._factor_names}

    def key(self) -> tuple[str, ...]:
        """Discrete factor tuple, in factor order (used for the split)."""
        return tuple(getattr(self, name) for name in self._factor_names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


S = TypeVar("S", bound=JitteredScene)


def draw_scenes(cls: type[S], combos: Sequence[tuple[str, ...]], n: int, seed: int) -> list[S]:
    """``n`` scenes of ``cls`` drawn uniformly (with replacement) from ``combos``, with uniform jitter in
    [-max_jitter, max_jitter] on both axes; reproducible for a given seed (one generator, indices then jitter)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(combos), size=n)
    jitter = rng.uniform(-cls._max_jitter, cls._max_jitter, size=(n, 2))
    return [cls.from_key(combos[i], float(dx), float(dy)) for i, (dx, dy) in zip(idx, jitter)]
