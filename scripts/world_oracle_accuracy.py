"""Per-factor oracle accuracy on held-out renders of the ground-truth world.

    python scripts/world_oracle_accuracy.py [--world shapes|faces] --n 2000 [--resolution 32] [--noise 8] [--blur 0.7]

Ground truth is the sampled scene; an invalid oracle reading counts as wrong on every factor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout too

from harness.world.registry import get_world, world_names


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="shapes", choices=world_names())
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="heldout", choices=["train", "heldout"])
    ap.add_argument("--noise", type=float, default=0.0, help="gaussian noise std, 0..255 units")
    ap.add_argument("--blur", type=float, default=0.0, help="gaussian blur sigma, pixels")
    args = ap.parse_args(argv)

    world = get_world(args.world)
    scenes = world.sample(args.n, args.seed, args.split)
    images = world.render_batch(scenes, args.resolution).astype(np.float64)
    if args.blur:
        images = ndimage.gaussian_filter(images, (0, args.blur, args.blur, 0))
    if args.noise:
        images += np.random.default_rng(args.seed).normal(0.0, args.noise, images.shape)
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)

    results = [world.read(img) for img in images]
    FACTOR_NAMES = world.factor_names
    # an invalid reading counts as wrong on every factor
    hits = np.array([[r.valid and r.factors()[f] == s.factors()[f] for f in FACTOR_NAMES]
                     for s, r in zip(scenes, results)])
    valid = np.array([r.valid for r in results])

    print(f"world={world.name} split={args.split} resolution={args.resolution} seed={args.seed} "
          f"noise={args.noise} blur={args.blur}")
    print(f"{'factor':<8} {'accuracy':>9} {'n':>6}")
    for j, name in enumerate(FACTOR_NAMES):
        print(f"{name:<8} {hits[:, j].mean():>9.4f} {len(scenes):>6}")
    print(f"{'all':<8} {hits.all(axis=1).mean():>9.4f} {len(scenes):>6}")
    print(f"{'valid':<8} {valid.mean():>9.4f} {len(scenes):>6}")
    reasons: dict[str, int] = {}
    for r in results:
        if not r.valid:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  invalid x{count}: {reason}")


if __name__ == "__main__":
    main()
