"""Measure how avi and park's continuation after the edit step decides whether an edit survives (issue 15).

On world-text2img and the world suite: for each continuation (prompt, guidance) the oracle's flip rate of the
edit, and of a control that continues the UNEDITED state the same way (so a flip caused by the continuation
alone shows up there, not as the method's). Usage:
    python scripts/measure_continuation.py [--seeds 4] [--items circle-large,...] [--methods avi,park]
Prints one line per (method, continuation) and writes nothing.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from harness.config import SamplerConfig
from harness.diffusion import Schedule, denoise
from harness.models import load_backbone
from harness.suites import load_suite
from harness.world import FACTOR_NAMES, read_scene
from methods._common import continuation_condition, original_condition, start_noise
from methods._scorers import ScorerSpec
from methods._subspace import StopCriterion
from methods.avi import AVI, AVIOptions
from methods.base import EditRequest, PrepareContext
from methods.park_pullback import ParkOptions, ParkPullback
from metrics.oracle import unit_values

CONTINUATIONS = (("original", None), ("empty", 1.0), ("target", None))


def readings(images: torch.Tensor) -> list:
    return [read_scene((im.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()) for im in images]


def score(origs, edits, reqs, suite) -> dict[str, float]:
    vals = []
    for o, e, r in zip(origs, edits, reqs):
        a = suite.attributes[r.item.attribute]
        vals.append(unit_values(o, e, a.factor, a.value, FACTOR_NAMES))
    out = {}
    for m in ("oracle_flip", "oracle_preservation", "oracle_base_rate", "oracle_valid"):
        v = np.array([x[m] for x in vals], dtype=np.float64)
        out[m] = float(np.nanmean(v)) if (~np.isnan(v)).any() else math.nan
        out[m + "_n"] = int((~np.isnan(v)).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--items", default="circle-large,circle-red,circle-square,circle-left,square-blue-bg")
    ap.add_argument("--methods", default="avi,park")
    ap.add_argument("--avi-pairs", type=int, default=1)
    ap.add_argument("--avi-renormalise", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    bb = load_backbone("world-text2img", device="cpu")
    suite = load_suite("world")
    sampler = SamplerConfig(num_steps=20, eta=0.0, guidance_scale=5.0)
    items = [suite.item(i) for i in args.items.split(",")]
    reqs = [EditRequest(f"{it.id}-{s}", it, 1.0, 1000 + s) for it in items for s in range(args.seeds)]
    schedule = Schedule.from_backbone(bb, sampler.num_steps)
    clip = ScorerSpec(kind="clip", options={"backend": "transformers", "model": "checkpoints/world-clip"})
    for name in args.methods.split(","):
        t0 = time.time()
        if name == "avi":
            base = dict(samples_per_pair=500 if args.avi_pairs == 1 else 200, epochs=5, width=256,
                        pairs_per_item=args.avi_pairs, renormalise=args.avi_renormalise)
            state = AVI(AVIOptions(**base)).prepare(bb, PrepareContext(suite=suite, sampler=sampler, seed=0))
        for prompt, guidance in CONTINUATIONS:
            if name == "avi":
                method = AVI(AVIOptions(**base, continue_prompt=prompt, continue_guidance=guidance))
                lat = method.edit_latents(bb, state, reqs, sampler)
                x_edit, i_edit = lat["x"], lat["i_x"]
                extra = f" norm_ratio {float(lat['ratio'].mean()):.3f}"
            else:
                method = ParkPullback(ParkOptions(pca_rank=2, n_guidance=8, scorer=clip, continue_prompt=prompt,
                                                  continue_guidance=guidance, convergence=StopCriterion(
                                                      kind="vectors", tol=1e-3, max_iters=15, min_iters=3)))
                i_edit = schedule.step_index(0.7)
                x_T, _ = start_noise(bb, reqs, sampler)
                x_edit = denoise(bb, x_T, schedule, original_condition(bb, reqs, sampler), stop=i_edit)
                extra = ""
            outs = []
            for b in range(0, len(reqs), 4):
                outs += method.edit(bb, state if name == "avi" else {}, reqs[b:b + 4], sampler)
            cond_c = continuation_condition(bb, reqs, sampler, prompt, guidance)
            control = bb.decode(denoise(bb, x_edit, schedule, cond_c, start=i_edit))
            origs = readings(torch.stack([o.original for o in outs]))
            edit = score(origs, readings(torch.stack([o.edited for o in outs])), reqs, suite)
            ctrl = score(origs, readings(control), reqs, suite)
            print(f"{name} continue={prompt}@{guidance if guidance is not None else sampler.guidance_scale}: "
                  f"flip {edit['oracle_flip']:.3f} (n={edit['oracle_flip_n']}) pres {edit['oracle_preservation']:.3f} "
                  f"valid {edit['oracle_valid']:.3f} | control flip {ctrl['oracle_flip']:.3f} pres "
                  f"{ctrl['oracle_preservation']:.3f} | base {edit['oracle_base_rate']:.3f}{extra} "
                  f"({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
