"""Calibrated vs fixed component on the embedded world: what calibration picks and the oracle's edit success.

    python scripts/calibration_compare.py --method hspace-pca --seeds 8 --strength 2.0 \
        --options '{"n_samples": 64, "n_components": 4}'

For one method on world-ddpm and the `world` suite: prepare it once with `component: auto` (oracle scorer unless
--scorer, calibration at the evaluated strength), then edit the evaluated samples (the noise seeds a run with
`seeds: N` uses) with the calibrated choice and with `component: 0`, sign + (the old default; the same fitted
directions). Prints the calibration's choices and gains, and per attribute the oracle's success (edited image
valid and showing the target) of both and the share of originals already showing it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout too

from harness.config import SamplerConfig
from harness.models import load_backbone
from harness.schema import from_dict
from harness.suites import load_suite
from harness.units import WorkUnit
from methods._scorers import ScorerSpec, make_scorer, score_attribute
from methods.base import EditRequest, PrepareContext, discover_methods


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True, choices=["hspace-pca", "jacobian", "park"])
    ap.add_argument("--model", default="world-ddpm")
    ap.add_argument("--suite", default="world")
    ap.add_argument("--seeds", type=int, default=8, help="evaluated seeds 0..N-1 per item")
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--options", default="{}", help="method options (JSON) shared by both variants")
    ap.add_argument("--calibration-samples", type=int, default=8)
    ap.add_argument("--scorer", default='{"kind": "oracle"}', help="calibration scorer spec (JSON)")
    ap.add_argument("--prepare-seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    backbone = load_backbone(args.model, device="cpu")
    suite = load_suite(args.suite)
    sampler = SamplerConfig(num_steps=args.steps, eta=0.0, guidance_scale=5.0)
    cls = discover_methods().get(args.method)
    shared = json.loads(args.options)
    variants = {
        "component 0": {**shared, "component": 0},
        "calibrated": {**shared, "component": "auto", "scorer": json.loads(args.scorer),
                       "calibration": {"n_samples": args.calibration_samples, "strengths": [args.strength]}},
    }
    if args.method == "park":
        variants["component 0"]["sign"] = "positive"
    requests = [EditRequest(f"{it.id}/{k}", it, args.strength,
                            WorkUnit(args.method, args.model, args.suite, it.id, it.attribute, args.strength, k).noise_seed)
                for it in suite.items for k in range(args.seeds)]
    oracle = make_scorer(ScorerSpec(kind="oracle"))
    attributes = list(dict.fromkeys(it.attribute for it in suite.items))
    # One prepare serves both variants: the fitted directions depend only on the prepare seed, and a fixed
    # component ignores the calibration in the state.
    methods = {name: cls(from_dict(cls.Options, options, prefix="options")) for name, options in variants.items()}
    t0 = time.time()
    state = methods["calibrated"].prepare(backbone, PrepareContext(suite, sampler, args.prepare_seed))
    print(f"== {args.method}: prepare with calibration {time.time() - t0:.0f} s", flush=True)
    for group in state.get("calibration", {}).values():
        for a, rec in group.items():
            pos = ", ".join(f"{g:+.3f}" for g in rec["candidates"]["gain_positive"])
            neg = ", ".join(f"{g:+.3f}" for g in rec["candidates"]["gain_negative"])
            print(f"  calibration[{a}]: component {rec['component']} sign {rec['sign']} (gain {rec['gain']:+.3f}; "
                  f"mean gain per component at + [{pos}], at − [{neg}]; baseline {rec['baseline']:.3f})", flush=True)
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name, method in methods.items():
        t1 = time.time()
        outs = []
        for start in range(0, len(requests), args.batch):
            outs += method.edit(backbone, state, requests[start:start + args.batch], sampler)
        per = {a: {"success": [], "original": []} for a in attributes}
        for r, o in zip(requests, outs):
            spec = suite.attributes[r.item.attribute]
            per[r.item.attribute]["success"].append(float(score_attribute(oracle, o.edited[None], spec)[0]))
            per[r.item.attribute]["original"].append(float(score_attribute(oracle, o.original[None], spec)[0]))
        results[name] = per
        print(f"== {name}: edit {time.time() - t1:.0f} s ({len(requests)} requests)", flush=True)
    print(f"\noracle success on {args.seeds} seeds per item, strength {args.strength}:")
    print(f"{'attribute':10s} {'n':>3s} {'original':>9s} " + " ".join(f"{v:>12s}" for v in variants))
    for a in attributes:
        n = len(results["calibrated"][a]["success"])
        orig = sum(results["calibrated"][a]["original"]) / n
        cells = " ".join(f"{sum(results[v][a]['success']) / n:12.3f}" for v in variants)
        print(f"{a:10s} {n:3d} {orig:9.3f} {cells}")
    total = {v: sum(sum(results[v][a]["success"]) for a in attributes) / len(requests) for v in variants}
    print(f"{'all':10s} {len(requests):3d} {'':9s} " + " ".join(f"{total[v]:12.3f}" for v in variants), flush=True)


if __name__ == "__main__":
    main()
