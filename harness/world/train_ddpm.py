"""Train the embedded unconditional pixel DDPM on the procedural world (the CelebA-HQ DDPM's stand-in).

    python -m harness.world.train_ddpm --out checkpoints/world-ddpm --minutes 60

Saves a diffusers directory (unet/ in safetensors, scheduler/, model_index.json) that loads through
the same code path as google/ddpm-ema-celebahq-256, plus loss.csv and samples.png. The EMA weights
are what is saved: on a short CPU budget they sample far better than the raw weights.
Checkpoints are written every --save-every steps, so a stopped run leaves a usable model.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from harness.world._training import (
    WorldData, add_prediction_arg, add_resume_args, add_run_args, add_world_args, default_out, apply_run_args, build_scheduler, noised_and_target,
    optimiser_step, rates, save_grid, start_training, to_uint8_images,
)


def build_unet(resolution: int):
    from diffusers import UNet2DModel

    # Attention with one head: the default 8-dim heads hit a slow CPU backward kernel (environment-notes §6).
    return UNet2DModel(
        sample_size=resolution, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(32, 64, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=None,
    )


def pixel_weights(resolution: int, box: str | None, weight: float) -> torch.Tensor:
    """(1, 1, R, R) loss weights: `weight` for pixels whose centres lie in `box` ("x0,x1,y0,y1", fractions of the
    side), 1 elsewhere; all ones without a box."""
    w = torch.ones((1, 1, resolution, resolution))
    if box is not None and weight != 1.0:
        x0, x1, y0, y1 = (float(v) for v in box.split(","))
        c = (torch.arange(resolution) + 0.5) / resolution
        inside = ((c[None, :] >= x0) & (c[None, :] <= x1) & (c[:, None] >= y0) & (c[:, None] <= y1))
        w[0, 0][inside] = weight
    return w


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of weight * (pred - target)^2 over pixels, normalised by the mean weight (equals F.mse_loss when the
    weights are all one), so that the learning rate keeps its meaning."""
    return ((pred - target) ** 2 * weight).mean() / weight.mean()


def batch_images(step: int, batch_size: int, resolution: int, seed: int, world: str = "shapes") -> torch.Tensor:
    return WorldData(world, resolution, seed).batch(step, batch_size)[0]


def save(out: Path, ema, scheduler) -> None:
    from diffusers import DDPMPipeline

    out.mkdir(parents=True, exist_ok=True)
    DDPMPipeline(unet=ema, scheduler=scheduler).save_pretrained(out, safe_serialization=True)


# The sampler the check and the sample grid use: ancestral (eta = 1) DDIM with 500 steps. The
# committed model, sampled deterministically, leaves off-palette colours on small objects; the
# fresh noise of ancestral steps corrects them, more so the more steps (oracle-valid rate of 512
# samples, seed 0: 0.842 at eta 0 / 50 steps; at eta 1: 0.873 / 50, 0.893 / 100, 0.906 / 200,
# 0.920 / 500).
SAMPLE_STEPS, SAMPLE_ETA = 500, 1.0


@torch.no_grad()
def sample(unet, scheduler, n: int, steps: int = SAMPLE_STEPS, eta: float = SAMPLE_ETA, seed: int = 0,
           batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """DDIM samples (eta 0 deterministic, 1 ancestral) as uint8 (n, R, R, 3); one generator drives the
    initial noise and every step's noise, batch after batch."""
    from tqdm import tqdm

    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(steps)
    size = unet.config.sample_size
    g = torch.Generator().manual_seed(seed)
    out = []
    with tqdm(total=n * steps, desc="DDPM samples", unit="img-step", unit_scale=True, disable=not progress) as bar:
        for i in range(0, n, batch_size):
            x = torch.randn((min(batch_size, n - i), 3, size, size), generator=g)
            for t in sched.timesteps:
                x = sched.step(unet(x, t).sample, t, x, eta=eta, generator=g).prev_sample
                bar.update(x.shape[0])
            out.append(to_uint8_images(x))
    return np.concatenate(out)


def sample_grid(unet, scheduler, n: int, path: Path, seed: int = 0) -> None:
    save_grid(sample(unet.eval(), scheduler, n, seed=seed), path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_world_args(p)
    p.add_argument("--out", type=Path, default=None, help="default checkpoints/world-ddpm (shapes), "
                   "checkpoints/<world>-ddpm otherwise")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--save-every", type=int, default=500)
    # Fine detail (faces: the mouth, wrinkles, brows) is decided at low noise and covers a few pixels; these two
    # reallocate the loss towards it without changing its minimiser (each pixel's and each t's optimum is the
    # same conditional mean): measured on faces-ddpm at step 8,500, clean held-out renders noised to t = 181 and
    # denoised deterministically came back ambiguous in 12.5% of cases (64 renders), so the error starts there.
    p.add_argument("--low-t-share", type=float, default=0.0,
                   help="share of the batch whose t is drawn from [0, --low-t-max) instead of [0, 1000)")
    p.add_argument("--low-t-max", type=int, default=400)
    p.add_argument("--focus-box", type=str, default=None, metavar="X0,X1,Y0,Y1",
                   help="a box (fractions of the side) whose pixels weigh --focus-weight in the loss")
    p.add_argument("--focus-weight", type=float, default=1.0)
    add_run_args(p)
    add_resume_args(p)
    add_prediction_arg(p)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = default_out(args.world, "ddpm")
    apply_run_args(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.resume:
        from diffusers import UNet2DModel

        unet = UNet2DModel.from_pretrained(args.out, subfolder="unet").to(device)
    else:
        unet = build_unet(args.resolution).to(device)
    scheduler = build_scheduler(args.prediction)
    ema, alphas, opt, log, g = start_training(unet, scheduler, args, device)
    data = WorldData(args.world, args.resolution, args.seed, args.pool)
    weight = pixel_weights(args.resolution, args.focus_box, args.focus_weight).to(device)
    start = time.time()
    step = args.start_step
    while step < args.start_step + args.max_steps and time.time() - start < args.minutes * 60:
        x0 = data.batch(step, args.batch_size)[0].to(device)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        noise = torch.randn(x0.shape, generator=g).to(device)
        if args.low_t_share > 0:
            low = torch.rand(x0.shape[0], generator=g) < args.low_t_share
            t = torch.where(low, torch.randint(0, args.low_t_max, (x0.shape[0],), generator=g), t)
        t = t.to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        x_t, target = noised_and_target(x0, noise, a, args.prediction)
        loss = weighted_mse(unet(x_t, t).sample, target, weight)
        lr, decay = rates(args, step)
        optimiser_step(opt, unet, loss, lr, ema, decay)
        step += 1
        log.write(step, loss.item())
        if step % args.save_every == 0:
            save(args.out, ema, scheduler)
    save(args.out, ema, scheduler)
    sample_grid(ema.cpu(), scheduler, 36, args.out / "samples.png")
    print(f"done: {step} steps in {time.time() - start:.0f}s -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
