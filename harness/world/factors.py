"""Factor vocabulary of the embedded ground-truth world, and the `Scene` dataclass.

A scene is one flat-coloured object on a flat background. Every discrete factor is
listed here; geometry is given as fractions of the image side so that a scene means the
same thing at every resolution (``render`` scales it).

Geometry (fractions of the resolution R):
  * every shape is centred on its anchor (its centroid *is* the anchor: the triangle is
    equilateral and centred on its circumcentre) and fits in the axis-aligned box of
    half-side ``h = SIZE_EXTENT[size]`` around it;
  * anchors sit at 1/4, 1/2, 3/4 of each axis; ``dx``/``dy`` jitter moves the object by at
    most ``MAX_JITTER``. Since 0.25 - MAX_JITTER - h_large > 0, nothing ever leaves the
    image, and the oracle's cell thresholds (3/8, 5/8: midway between anchors) stay
    ``1/8 - MAX_JITTER`` (3 px at 32 px) away from any true centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._scene import JitteredScene

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# The 8 corners of the RGB cube: every pair is >= 255 apart (Euclidean, 0..255 units), the
# largest separation 8 colours can have, so snapping survives heavy noise / colour shift.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
MIN_COLOR_SEPARATION: float = 255.0  # smallest pairwise palette distance (checked in tests)

SIZES: tuple[str, ...] = ("small", "large")
# Half-extent h of the object as a fraction of the resolution: 4 px vs 6.72 px at 32 px.
SIZE_EXTENT: dict[str, float] = {"small": 0.125, "large": 0.21}

XS: tuple[str, ...] = ("left", "center", "right")
YS: tuple[str, ...] = ("top", "middle", "bottom")
X_ANCHOR: dict[str, float] = {"left": 0.25, "center": 0.5, "right": 0.75}
Y_ANCHOR: dict[str, float] = {"top": 0.25, "middle": 0.5, "bottom": 0.75}
MAX_JITTER: float = 0.03  # |dx|, |dy| bound, fraction of the resolution (~1 px at 32 px)

FACTOR_NAMES: tuple[str, ...] = ("shape", "fg", "bg", "size", "x", "y")
FACTOR_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES, "fg": COLORS, "bg": COLORS, "size": SIZES, "x": XS, "y": YS,
}

assert max(SIZE_EXTENT.values()) + MAX_JITTER < min(X_ANCHOR.values()), "objects must stay inside"


@dataclass(frozen=True)
class Scene(JitteredScene):
    """One object on a background. ``dx``/``dy`` are continuous jitter (fraction of the side)."""

    shape: str
    fg: str
    bg: str
    size: str
    x: str
    y: str
    dx: float = 0.0
    dy: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fg == self.bg:
            raise ValueError(f"fg and bg must differ (both {self.fg!r})")

    def center(self) -> tuple[float, float]:
        """Object centre (= centroid) as fractions of the side, (x, y)."""
        return X_ANCHOR[self.x] + self.dx, Y_ANCHOR[self.y] + self.dy

    def extent(self) -> float:
        """Half-extent h as a fraction of the side."""
        return SIZE_EXTENT[self.size]


Scene._factor_names, Scene._factor_values, Scene._max_jitter = FACTOR_NAMES, FACTOR_VALUES, MAX_JITTER
