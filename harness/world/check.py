"""Figures of the embedded world's models, for whichever checkpoints exist.

    python -m harness.world.check [--world shapes|faces] [--clip checkpoints/world-clip] [--ddpm checkpoints/world-ddpm]
                                  [--text2img checkpoints/world-text2img] [--n-uncond 512] [--n-text 512]
                                  [--guidance 5] [--ddpm-steps 500] [--ddpm-eta 1] [--text-steps 50]
                                  [--text-eta 0] [--json out.json] [--threads N]

Each world sets its bars (harness.world.registry.WorldChecks): shapes holds its CLIP to shape and fg >= 0.95,
its text model to the prompted shape and fg colour >= 0.85 and samples its DDPM ancestrally (500 steps);
faces holds every one of its five attributes to 0.95 (CLIP) and 0.9 (text model) and its DDPM to
deterministic 50-step DDIM, what the editing methods run.

1. CLIP (train_clip.py): zero-shot accuracy per caption group on held-out renders.
2. Unconditional DDPM (train_ddpm.py; a DDPMPipeline directory, unet/ + scheduler/): DDIM samples
   (by default ancestral, eta 1, with 500 steps: train_ddpm.SAMPLE_STEPS / SAMPLE_ETA),
   the oracle's validity rate, and per factor the total-variation distance between the oracle's readings of
   the valid samples and the training split's marginal (uniform over the train combinations).
3. Text-to-image (train_text2img.py): DDIM samples with classifier-free guidance from captions of held-out
   scenes (never-seen factor combinations; --prompt-split train for seen ones); the rate at which the oracle
   reads the prompted shape / fg colour (an invalid reading counts as a miss), and the other factors too.
4. Embedded-backbone FID: Fréchet distance (float64) between the world CLIP's image embeddings
   (get_image_features) of a set and of --n-ref held-out renders, for the unconditional samples, the
   text-conditional samples and, as a yardstick, held-out renders with their pixels shuffled (as many as
   samples; bar: samples' FID < 1/5 of the shuffled images').
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from harness.world._training import MAX_SAMPLING_STEPS, default_out
from harness.world.registry import World, get_world, world_names


# ----------------------------------------------------------------------------- helpers (tested)

def tv_distance(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Total-variation distance 1/2 * sum |p - q| over the union of the two supports."""
    keys = set(p) | set(q)
    return 0.5 * float(sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys))


def empirical_distribution(values: Iterable[str], support: Sequence[str]) -> dict[str, float]:
    """Frequencies of `values` over `support` (all zeros for no values)."""
    values = list(values)
    n = len(values)
    return {v: (sum(x == v for x in values) / n if n else 0.0) for v in support}


def training_marginals(split: str = "train", world: World | None = None) -> dict[str, dict[str, float]]:
    """Exact per-factor marginals of the world's sample(split): uniform over the split's factor combinations."""
    w = world or get_world("shapes")
    combos = w.split_combinations(split)
    return {name: empirical_distribution((c[i] for c in combos), w.factor_values[name])
            for i, name in enumerate(w.factor_names)}


def factor_tv(readings: Sequence[Any], reference: Mapping[str, Mapping[str, float]] | None = None,
              world: World | None = None) -> dict[str, float]:
    """Per factor, TV distance between the valid oracle readings' distribution and `reference`."""
    w = world or get_world("shapes")
    reference = reference or training_marginals(world=w)
    valid = [r.factors() for r in readings if r.valid]
    return {name: tv_distance(empirical_distribution((f[name] for f in valid), w.factor_values[name]),
                              reference[name]) for name in w.factor_names}


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2), in float64 (eigenvalues of S1 S2 are real >= 0
    in exact arithmetic; the complex square root absorbs rounding)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    diff = mu1 - mu2
    tr_covmean = np.sqrt(np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)).real.sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (n, d) feature sets (unbiased covariances)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def pixel_shuffle(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each (R, R, 3) image with its pixel positions randomly permuted (colour histogram kept, layout lost)."""
    rng = np.random.default_rng(seed)
    n, h, w, c = images.shape
    flat = images.reshape(n, h * w, c)
    return np.stack([f[rng.permutation(h * w)] for f in flat]).reshape(images.shape)


# ----------------------------------------------------------------------------- model runs

def _ddim(directory: Path):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_pretrained(directory, subfolder="scheduler", local_files_only=True)
    return DDIMScheduler.from_config(sched.config, clip_sample=False)


def sample_unconditional(directory: Path, n: int, steps: int, seed: int = 0, batch_size: int = 64,
                         eta: float = 0.0, progress: bool = False) -> np.ndarray:
    from diffusers import UNet2DModel

    from harness.world.train_ddpm import sample

    unet = UNet2DModel.from_pretrained(directory, subfolder="unet", local_files_only=True).eval()
    return sample(unet, _ddim(directory), n, steps, eta, seed, batch_size, progress)


def sample_text(directory: Path, prompts: Sequence[str], guidance: float, steps: int, seed: int = 0,
                batch_size: int = 32, eta: float = 0.0, progress: bool = False) -> np.ndarray:
    from diffusers import UNet2DConditionModel
    from tqdm import tqdm
    from transformers import CLIPTextModel, CLIPTokenizer

    from harness.world.train_text2img import encode_prompts, sample

    unet = UNet2DConditionModel.from_pretrained(directory, subfolder="unet", local_files_only=True).eval()
    text_encoder = CLIPTextModel.from_pretrained(directory, subfolder="text_encoder", local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(directory, subfolder="tokenizer", local_files_only=True)
    sched = _ddim(directory)
    uncond = encode_prompts(text_encoder, tokenizer, [""])
    out = []
    with tqdm(total=len(prompts), desc="text2img samples", unit="img", disable=not progress) as bar:
        for i in range(0, len(prompts), batch_size):
            cond = encode_prompts(text_encoder, tokenizer, prompts[i:i + batch_size])
            out.append(sample(unet, sched, cond, uncond, guidance, steps, seed=seed + i, eta=eta))
            bar.update(len(cond))
    return np.concatenate(out)


class WorldClip:
    def __init__(self, directory: Path):
        from transformers import CLIPModel, CLIPTokenizer

        self.model = CLIPModel.from_pretrained(directory, local_files_only=True).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(directory, local_files_only=True)

    def features(self, images: np.ndarray) -> np.ndarray:
        from harness.world.train_clip import image_features

        return image_features(self.model, images).double().numpy()

    def zero_shot(self, images: np.ndarray, scenes, world: World | None = None) -> dict[str, float]:
        from harness.world.train_clip import zero_shot_accuracy

        return zero_shot_accuracy(self.model, self.tokenizer, images, scenes, world=world)


def prompted_rates(scenes, images: np.ndarray, world: World | None = None) -> dict[str, float]:
    """Share of images where the oracle is valid and reads each factor as prompted."""
    w = world or get_world("shapes")
    readings = [w.read(im) for im in images]
    rates = {name: float(np.mean([r.valid and r.factors()[name] == s.factors()[name]
                                  for r, s in zip(readings, scenes)])) for name in w.factor_names}
    return {"valid": float(np.mean([r.valid for r in readings])), **rates}


# ----------------------------------------------------------------------------- report

def _fmt(d: Mapping[str, float]) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in d.items())


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", choices=world_names(), default="shapes", help="which world's models to check")
    p.add_argument("--clip", type=Path, default=None, help="default: the world's checkpoint (checkpoints/"
                   "world-clip for shapes, checkpoints/<world>-clip otherwise); likewise --ddpm and --text2img")
    p.add_argument("--ddpm", type=Path, default=None)
    p.add_argument("--text2img", type=Path, default=None)
    p.add_argument("--n-clip", type=int, default=1000, help="held-out renders for the zero-shot eval")
    p.add_argument("--n-ref", type=int, default=1000, help="held-out renders as the FID reference")
    # 512: with 8-valued colour factors, TV from sampling noise alone is ~0.1 at n = 128 (the bar), ~0.05
    # at 512; and FID on 64-d features is strongly biased at n = 64.
    p.add_argument("--n-uncond", type=int, default=512, help="unconditional samples")
    p.add_argument("--n-text", type=int, default=512, help="text-conditional samples (one prompt each)")
    p.add_argument("--prompt-split", choices=("heldout", "train"), default="heldout")
    p.add_argument("--guidance", type=float, default=5.0)
    # Each model's sampler (DDIM; eta 0 deterministic, 1 ancestral): the DDPM's default is its world's (shapes:
    # the ancestral sampler of its samples.png; faces: deterministic 50 steps, what the editing methods run),
    # the text model's the harness' default (50 steps, eta 0).
    p.add_argument("--ddpm-steps", type=int, default=None, help="DDIM steps, unconditional DDPM (world default)")
    p.add_argument("--ddpm-eta", type=float, default=None, help="DDIM eta, unconditional DDPM (world default)")
    p.add_argument("--text-steps", type=int, default=50, help="DDIM steps, text-to-image model")
    p.add_argument("--text-eta", type=float, default=0.0, help="DDIM eta, text-to-image model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    world = get_world(args.world)
    bars = world.checks
    args.clip = args.clip or default_out(world.name, "clip")
    args.ddpm = args.ddpm or default_out(world.name, "ddpm")
    args.text2img = args.text2img or default_out(world.name, "text2img")
    args.ddpm_steps = bars.ddpm_steps if args.ddpm_steps is None else args.ddpm_steps
    args.ddpm_eta = bars.ddpm_eta if args.ddpm_eta is None else args.ddpm_eta
    for flag in ("ddpm_steps", "text_steps"):
        if not 1 <= getattr(args, flag) <= MAX_SAMPLING_STEPS:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: DDIM steps must be 1..{MAX_SAMPLING_STEPS} "
                    f"(the models' 1000 training timesteps with steps_offset 1); pass fewer steps")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    res = world.resolution
    results: dict[str, Any] = {"world": world.name}
    clip: WorldClip | None = None
    print(f"world {world.name!r}: {world.description}")

    if (args.clip / "config.json").is_file():
        clip = WorldClip(args.clip)
        scenes = world.sample(args.n_clip, 12345, "heldout")
        acc = clip.zero_shot(world.render_batch(scenes, res), scenes, world)
        results["clip_zero_shot"] = acc
        groups = bars.zero_shot_groups or tuple(acc)
        ok = min(acc[g] for g in groups) >= bars.zero_shot_bar
        print(f"CLIP zero-shot on {args.n_clip} held-out renders: {_fmt(acc)}  "
              f"[{', '.join(groups)} >= {bars.zero_shot_bar}: {_verdict(ok)}]")
    else:
        print(f"CLIP: no checkpoint at {args.clip}")

    ref_feats = None
    if clip is not None:
        ref_feats = clip.features(world.render_batch(world.sample(args.n_ref, args.seed + 999, "heldout"), res))

    samples_uncond = None
    if (args.ddpm / "unet").is_dir():
        t0 = time.time()
        samples_uncond = sample_unconditional(args.ddpm, args.n_uncond, args.ddpm_steps, args.seed,
                                              eta=args.ddpm_eta, progress=True)
        readings = [world.read(im) for im in samples_uncond]
        valid = float(np.mean([r.valid for r in readings]))
        tv = factor_tv(readings, world=world)
        results["uncond"] = {"n": args.n_uncond, "steps": args.ddpm_steps, "eta": args.ddpm_eta, "valid": valid,
                             "tv": tv}
        print(f"DDPM {args.ddpm}: {args.n_uncond} samples ({args.ddpm_steps} DDIM steps, eta {args.ddpm_eta:g}, "
              f"{time.time() - t0:.0f}s): "
              f"oracle-valid {valid:.3f} [>= {bars.valid_bar}: {_verdict(valid >= bars.valid_bar)}]; TV to train "
              f"marginals: {_fmt(tv)} [each <= {bars.tv_bar}: {_verdict(max(tv.values()) <= bars.tv_bar)}]")
    else:
        print(f"DDPM: no checkpoint at {args.ddpm}")

    samples_text = None
    if (args.text2img / "unet").is_dir():
        t0 = time.time()
        scenes = world.sample(args.n_text, args.seed + 4242, args.prompt_split)
        samples_text = sample_text(args.text2img, [world.caption(s) for s in scenes], args.guidance,
                                   args.text_steps, args.seed, eta=args.text_eta, progress=True)
        rates = prompted_rates(scenes, samples_text, world)
        results["text"] = {"n": args.n_text, "steps": args.text_steps, "eta": args.text_eta,
                           "prompt_split": args.prompt_split, "guidance": args.guidance,
                           "rates": rates}
        prompted = bars.prompted_factors or world.factor_names
        ok = min(rates[f] for f in prompted) >= bars.prompted_bar
        print(f"text2img {args.text2img}: {args.n_text} {args.prompt_split} captions, CFG {args.guidance}, "
              f"{args.text_steps} DDIM steps, eta {args.text_eta:g} ({time.time() - t0:.0f}s): "
              + " ".join(f"prompted-{f} {rates[f]:.3f}" for f in prompted)
              + f" [each >= {bars.prompted_bar}: {_verdict(ok)}]; all: {_fmt(rates)}")
    else:
        print(f"text2img: no checkpoint at {args.text2img}")

    if ref_feats is not None:
        assert clip is not None  # the reference features come from it
        fid: dict[str, float] = {}
        for name, images in (("uncond_samples", samples_uncond), ("text_samples", samples_text)):
            if images is None:
                continue
            fid[name] = fid_from_features(clip.features(images), ref_feats)
            n = len(images)
            shuffled = pixel_shuffle(world.render_batch(world.sample(n, args.seed + 77, "heldout"), res),
                                     seed=args.seed)
            fid[f"shuffled_n{n}"] = fid_from_features(clip.features(shuffled), ref_feats)
            ratio = fid[name] / fid[f"shuffled_n{n}"]
            fid[f"{name}_ratio"] = ratio
            print(f"FID (world-CLIP features, vs {args.n_ref} held-out renders): {name} {fid[name]:.4f}, "
                  f"pixel-shuffled held-out (n={n}) {fid[f'shuffled_n{n}']:.4f}, ratio {ratio:.3f}  "
                  f"[< {bars.fid_ratio_bar}: {_verdict(ratio < bars.fid_ratio_bar)}]")
        results["fid"] = fid
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
