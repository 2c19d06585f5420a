"""Measure how avi and park's continuation after the edit step decides whether an edit survives (issue 15).

On a world's text-to-image model and suite (default: world-text2img and the world suite; `--world faces` for
faces-text2img and faces_hspace): for each continuation (prompt, guidance) the oracle's flip rate of the
edit, and of a control that continues the UNEDITED state the same way (so a flip caused by the continuation
alone shows up there, not as the method's). Usage:
    python scripts/measure_continuation.py [--world shapes|faces] [--seeds 4] [--items circle-large,...]
        [--methods avi,park,target-latent] [--continuations original@null,empty@1,target@null] [--strength 1]
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
from harness.world.registry import get_world
from methods._calibration import CalibrationOptions
from methods._common import continuation_condition, original_condition, start_noise, target_condition
from methods._scorers import ScorerSpec
from methods._subspace import StopCriterion
from methods.avi import AVI, AVIOptions
from methods.base import EditOutput, EditRequest, PrepareContext
from methods.park_pullback import ParkOptions, ParkPullback
from metrics.oracle import unit_values

CONTINUATIONS = "original@null,empty@1,target@null"
# world -> (text-to-image model, suite, default items, CLIP checkpoint)
SETUPS = {
    "shapes": ("world-text2img", "world", "circle-large,circle-red,circle-square,circle-left,square-blue-bg",
               "checkpoints/world-clip"),
    "faces": ("faces-text2img", "faces_hspace", "smile,glasses,age,gender,hat", "checkpoints/faces-clip"),
}


def readings(world, images: torch.Tensor) -> list:
    return [world.read((im.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()) for im in images]


def score(world, origs, edits, reqs, suite) -> dict[str, float]:
    vals = []
    for o, e, r in zip(origs, edits, reqs):
        a = suite.attributes[r.item.attribute]
        vals.append(unit_values(o, e, a.factor, a.value, world.factor_names))
    out = {}
    for m in ("oracle_flip", "oracle_preservation", "oracle_base_rate", "oracle_valid"):
        v = np.array([x[m] for x in vals], dtype=np.float64)
        out[m] = float(np.nanmean(v)) if (~np.isnan(v)).any() else math.nan
        out[m + "_n"] = int((~np.isnan(v)).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", choices=sorted(SETUPS), default="shapes")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--items", default=None, help="suite items (default: the world's five)")
    ap.add_argument("--methods", default="avi,park",
                    help="avi, park, target-latent (the upper bound: the target prompt's own latent at t_edit)")
    ap.add_argument("--continuations", default=CONTINUATIONS, help="prompt@guidance, comma-separated; null = CFG")
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--t-edit", type=float, default=0.7, help="edit time as a fraction of T (avi t_x, park t_edit)")
    ap.add_argument("--park-rank", type=int, default=2, help="park's pca_rank (candidate components)")
    ap.add_argument("--park-scorer", choices=["clip", "oracle"], default="clip")
    ap.add_argument("--avi-pairs", type=int, default=1)
    ap.add_argument("--avi-samples", type=int, default=None, help="samples per pair (default 500, 200 with pairs)")
    ap.add_argument("--avi-z-source", choices=["branch", "independent"], default="branch")
    ap.add_argument("--avi-renormalise", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, suite_name, default_items, clip_path = SETUPS[args.world]
    world = get_world(args.world)
    bb = load_backbone(model, device="cpu")
    suite = load_suite(suite_name)
    sampler = SamplerConfig(num_steps=20, eta=0.0, guidance_scale=5.0)
    items = [suite.item(i) for i in (args.items or default_items).split(",")]
    reqs = [EditRequest(f"{it.id}-{s}", it, args.strength, 1000 + s) for it in items for s in range(args.seeds)]
    schedule = Schedule.from_backbone(bb, sampler.num_steps)
    continuations = [(p, None if g == "null" else float(g))
                     for p, g in (c.split("@") for c in args.continuations.split(","))]
    clip = ScorerSpec(kind="clip", options={"backend": "transformers", "model": clip_path})
    scorer = clip if args.park_scorer == "clip" else ScorerSpec(kind="oracle", options={"world": args.world})
    for name in args.methods.split(","):
        t0 = time.time()
        if name == "avi":
            samples = args.avi_samples or (500 if args.avi_pairs == 1 else 200)
            base = dict(samples_per_pair=samples, epochs=5, width=256, t_x=args.t_edit, z_source=args.avi_z_source,
                        pairs_per_item=args.avi_pairs, renormalise=args.avi_renormalise)
            state = AVI(AVIOptions(**base)).prepare(bb, PrepareContext(suite=suite, sampler=sampler, seed=0))
        for prompt, guidance in continuations:
            cond_c = continuation_condition(bb, reqs, sampler, prompt, guidance)
            if name == "avi":
                method = AVI(AVIOptions(**base, continue_prompt=prompt, continue_guidance=guidance))
                lat = method.edit_latents(bb, state, reqs, sampler)
                x_edit, i_edit = lat["x"], lat["i_x"]
                extra = f" norm_ratio {float(lat['ratio'].mean()):.3f}"
            elif name == "park":
                method = ParkPullback(ParkOptions(
                    pca_rank=args.park_rank, n_guidance=8, t_edit=args.t_edit, scorer=scorer, continue_prompt=prompt,
                    continue_guidance=guidance,
                    convergence=StopCriterion(kind="vectors", tol=1e-3, max_iters=15, min_iters=3),
                    calibration=CalibrationOptions(n_samples=4, strengths=(args.strength,))))
                # the calibration renders with this continuation, on seeds disjoint from the evaluated ones
                state = method.prepare(bb, PrepareContext(suite=suite, sampler=sampler, seed=0))
                i_edit = schedule.step_index(args.t_edit)
                x_T, _ = start_noise(bb, reqs, sampler)
                x_edit = denoise(bb, x_T, schedule, original_condition(bb, reqs, sampler), stop=i_edit)
                extra = ""
            elif name == "target-latent":
                # Upper bound of any latent-replacement edit at t_edit: the TARGET prompt's own x_{t_edit} (same
                # x_T) put in place of the original's, then the continuation.
                i_edit = schedule.step_index(args.t_edit)
                x_T, _ = start_noise(bb, reqs, sampler)
                cond_o = original_condition(bb, reqs, sampler)
                x_edit = denoise(bb, x_T, schedule, cond_o, stop=i_edit)
                x_target = denoise(bb, x_T, schedule, target_condition(bb, reqs, sampler), stop=i_edit)
                original = bb.decode(denoise(bb, x_edit, schedule, cond_o, start=i_edit))
                edited = bb.decode(denoise(bb, x_target, schedule, cond_c, start=i_edit))
                outs = [EditOutput(o, e, {}) for o, e in zip(original, edited)]
                extra = ""
            else:
                raise SystemExit(f"--methods: unknown {name!r} (avi, park, target-latent)")
            if name != "target-latent":
                outs = []
                for b in range(0, len(reqs), 4):
                    outs += method.edit(bb, state, reqs[b:b + 4], sampler)
            control = bb.decode(denoise(bb, x_edit, schedule, cond_c, start=i_edit))
            origs = readings(world, torch.stack([o.original for o in outs]))
            edit = score(world, origs, readings(world, torch.stack([o.edited for o in outs])), reqs, suite)
            ctrl = score(world, origs, readings(world, control), reqs, suite)
            print(f"{name} continue={prompt}@{guidance if guidance is not None else sampler.guidance_scale}: "
                  f"flip {edit['oracle_flip']:.3f} (n={edit['oracle_flip_n']}) pres {edit['oracle_preservation']:.3f} "
                  f"valid {edit['oracle_valid']:.3f} | control flip {ctrl['oracle_flip']:.3f} pres "
                  f"{ctrl['oracle_preservation']:.3f} | base {edit['oracle_base_rate']:.3f}{extra} "
                  f"({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
