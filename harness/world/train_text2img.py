"""Train the embedded text-conditional pixel model on the procedural world (Stable Diffusion's stand-in).

    python -m harness.world.train_text2img --clip checkpoints/world-clip --out checkpoints/world-text2img \\
        --minutes 70 --threads 1

A UNet2DConditionModel on 32x32x3 pixels (no VAE), conditioned through cross-attention on the FROZEN text
encoder of the world CLIP (train_clip.py): last hidden state, captions padded to 77 tokens, no attention
mask, exactly as harness.diffusion.backbone.Backbone.encode_text computes it. 10% of the captions are
replaced by "" so that classifier-free guidance works. v-prediction (--prediction), linear betas 1e-4..0.02 over
1000 steps (the world DDPM's schedule). The EMA weights are what is saved.

Output directory (Stable Diffusion's layout minus the VAE):

    unet/          UNet2DConditionModel, config.json + diffusion_pytorch_model.safetensors (EMA weights)
    scheduler/     DDIMScheduler config
    text_encoder/  CLIPTextModel (config.json + model.safetensors), the CLIP's text tower, frozen
    tokenizer/     CLIPTokenizer as vocab.json + merges.txt + tokenizer_config.json (model_max_length 77;
                   the 3.6 MB tokenizer.json is left out to keep the checkpoint small)
    model_index.json  "_class_name": "StableDiffusionPipeline", "vae": [null, null] (pixel space)
    loss.csv, samples.png (+ samples.txt: the prompts, row by row), training.json

Checkpoints are written every --save-every steps, so a stopped run leaves a usable model.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.world.registry import get_world
from harness.world._training import (
    WorldData, add_prediction_arg, add_resume_args, add_run_args, add_world_args, default_out, apply_run_args, build_scheduler, noised_and_target,
    optimiser_step, rates, save_grid, start_training, to_uint8_images,
)

ATTN_LEVELS = {
    # cross-attention (self-attn + cross-attn + FF transformer, 1 head) at the 8x8 level and the mid block
    1: (("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")),
    # ... and also at 16x16 (about 1.7x the CPU cost per step)
    2: (("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
}


def build_unet(cross_attention_dim: int, resolution: int = 32, attn_levels: int = 1,
               block_out_channels: Sequence[int] = (32, 64, 64)):
    from diffusers import UNet2DConditionModel

    down, up = ATTN_LEVELS[attn_levels]
    # In UNet2DConditionModel attention_head_dim is the number of heads; 1 head is fast on CPU (environment-notes §6).
    return UNet2DConditionModel(
        sample_size=resolution, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=tuple(block_out_channels), down_block_types=down, up_block_types=up,
        cross_attention_dim=cross_attention_dim, attention_head_dim=1, norm_num_groups=8,
    )


def load_text_tower(clip_dir: Path):
    """The frozen text encoder (CLIPTextModel) and tokenizer of a train_clip.py checkpoint."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    clip = CLIPModel.from_pretrained(clip_dir, local_files_only=True)
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())  # strict: every weight
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir, local_files_only=True)
    return text_encoder.eval().requires_grad_(False), tokenizer


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """(B, 77, D) last hidden state, max-length padding and no attention mask (Stable Diffusion's convention)."""
    tokens = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    return text_encoder(tokens.input_ids.to(text_encoder.device))[0]


def batch(step: int, batch_size: int, resolution: int, seed: int, world: str = "shapes") -> tuple[torch.Tensor, list[str]]:
    x, scenes = WorldData(world, resolution, seed).batch(step, batch_size)
    return x, [get_world(world).caption(s) for s in scenes]


MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": [None, None],
}


def save_tokenizer(tokenizer, directory: Path) -> None:
    """tokenizer_config.json + vocab.json + merges.txt (1.5 MB instead of tokenizer.json's 3.6 MB)."""
    from harness.models import clip_tokenizer_dir

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    (directory / "tokenizer.json").unlink(missing_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(Path(clip_tokenizer_dir()) / name, directory / name)


def save(out: Path, unet, scheduler, text_encoder, tokenizer) -> None:
    """Write the pipeline directory; each part goes to a temporary folder first, then replaces the old one."""
    import diffusers

    out.mkdir(parents=True, exist_ok=True)
    writers = {
        "unet": lambda d: unet.save_pretrained(d, safe_serialization=True),
        "scheduler": scheduler.save_pretrained,
        "text_encoder": lambda d: text_encoder.save_pretrained(d, safe_serialization=True),
        "tokenizer": lambda d: save_tokenizer(tokenizer, Path(d)),
    }
    for name, write in writers.items():
        tmp = out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        shutil.rmtree(out / name, ignore_errors=True)
        tmp.rename(out / name)
    index = {"_class_name": MODEL_INDEX["_class_name"], "_diffusers_version": diffusers.__version__,
             **{k: v for k, v in MODEL_INDEX.items() if k != "_class_name"}}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


@torch.no_grad()
def sample(unet, scheduler, cond: torch.Tensor, uncond: torch.Tensor, guidance: float, steps: int,
           seed: int = 0, eta: float = 0.0) -> np.ndarray:
    """DDIM with classifier-free guidance; uint8 (B, R, R, 3) images."""
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(steps)
    n, size = cond.shape[0], unet.config.sample_size
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 3, size, size), generator=g)
    context = torch.cat([uncond.expand(n, -1, -1), cond])
    for t in sched.timesteps:
        eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample.chunk(2)
        x = sched.step(eps_u + guidance * (eps_c - eps_u), t, x, eta=eta, generator=g).prev_sample
    return to_uint8_images(x)


def sample_grid(unet, scheduler, text_encoder, tokenizer, out: Path, n: int = 16, guidance: float = 5.0,
                steps: int = 50, world: str = "shapes") -> None:
    w = get_world(world)
    prompts = [w.caption(s) for s in w.sample(n, 7, "heldout")]
    images = sample(unet, scheduler, encode_prompts(text_encoder, tokenizer, prompts),
                    encode_prompts(text_encoder, tokenizer, [""]), guidance, steps)
    save_grid(images, out / "samples.png")
    side = int(math.ceil(math.sqrt(n)))
    (out / "samples.txt").write_text(
        f"held-out captions, CFG {guidance}, {steps} DDIM steps, {side} per row\n" + "\n".join(prompts) + "\n")


def main(argv: list[str] | None = None):
    """Train and save; returns (EMA UNet, text encoder, tokenizer)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_world_args(p)
    p.add_argument("--clip", type=Path, default=None, help="train_clip.py output (default: the world's, "
                   "checkpoints/world-clip or checkpoints/<world>-clip)")
    p.add_argument("--out", type=Path, default=None,
                   help="default checkpoints/world-text2img (shapes), checkpoints/<world>-text2img otherwise")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--attn-levels", type=int, default=1, choices=sorted(ATTN_LEVELS))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--minutes", type=float, default=70.0, help="wall-clock budget")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--uncond-prob", type=float, default=0.1, help="caption dropout to '' (for CFG)")
    p.add_argument("--save-every", type=int, default=300)
    p.add_argument("--sample-every-save", action="store_true", help="also refresh samples.png at every save")
    p.add_argument("--samples", type=int, default=16, help="images in samples.png (0: none)")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps for samples.png")
    p.add_argument("--sample-guidance", type=float, default=5.0)
    add_run_args(p)
    add_resume_args(p)
    add_prediction_arg(p)
    args = p.parse_args(argv)
    args.clip = args.clip or default_out(args.world, "clip")
    args.out = args.out or default_out(args.world, "text2img")
    apply_run_args(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    text_encoder, tokenizer = load_text_tower(args.clip)
    data = WorldData(args.world, args.resolution, args.seed, args.pool)
    world = get_world(args.world)
    text_encoder = text_encoder.to(device)
    if args.resume:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(args.out, subfolder="unet").to(device)
    else:
        unet = build_unet(text_encoder.config.hidden_size, args.resolution, args.attn_levels).to(device)
    scheduler = build_scheduler(args.prediction)
    ema, alphas, opt, log, g = start_training(unet, scheduler, args, device)
    start = time.time()
    step = args.start_step

    def checkpoint() -> None:
        save(args.out, ema, scheduler, text_encoder, tokenizer)
        info = {"steps": step, "seconds": round(time.time() - start, 1),
                "parameters_unet": sum(q.numel() for q in ema.parameters()),
                "clip": str(args.clip), "args": {k: str(v) for k, v in vars(args).items()}}
        (args.out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
        print(f"saved step {step} -> {args.out}", flush=True)

    while step < args.start_step + args.max_steps and time.time() - start < args.minutes * 60:
        x0, scenes = data.batch(step, args.batch_size)
        prompts = [world.caption(sc) for sc in scenes]
        drop = torch.rand(len(prompts), generator=g) < args.uncond_prob
        prompts = ["" if d else text for d, text in zip(drop.tolist(), prompts)]
        context = encode_prompts(text_encoder, tokenizer, prompts)
        x0 = x0.to(device)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        x_t, target = noised_and_target(x0, noise, a, args.prediction)
        loss = F.mse_loss(unet(x_t, t, encoder_hidden_states=context).sample, target)
        lr, decay = rates(args, step)
        optimiser_step(opt, unet, loss, lr, ema, decay)
        step += 1
        log.write(step, loss.item())
        if step % args.save_every == 0:
            checkpoint()
            if args.sample_every_save and args.samples:
                sample_grid(ema, scheduler, text_encoder, tokenizer, args.out, args.samples, args.sample_guidance,
                            args.sample_steps, args.world)
    if step % args.save_every:
        checkpoint()
    log.close()
    if args.samples:
        sample_grid(ema.cpu(), scheduler, text_encoder.cpu(), tokenizer, args.out, args.samples,
                    args.sample_guidance, args.sample_steps, args.world)
    print(f"done: {step} steps in {time.time() - start:.0f}s -> {args.out}", flush=True)
    return ema, text_encoder, tokenizer


if __name__ == "__main__":
    main()
