"""Pieces the world's training scripts share: the optimiser step with EMA, loss logging, sample images."""
from __future__ import annotations

import copy
import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def add_world_args(parser: Any) -> None:
    """--world and --pool, common to the world-model training scripts."""
    from harness.world.registry import world_names

    parser.add_argument("--world", choices=world_names(), default="shapes", help="which procedural world to learn")
    parser.add_argument("--pool", type=int, default=0,
                        help="pre-render this many train-split scenes and draw batches from them (0: render every "
                             "batch afresh); for worlds whose renderer costs a good part of a training step")


def default_out(world: str, kind: str) -> Path:
    """checkpoints/world-<kind> for the shapes world (its historical name), checkpoints/<world>-<kind> otherwise."""
    return Path(f"checkpoints/world-{kind}" if world == "shapes" else f"checkpoints/{world}-{kind}")


class WorldData:
    """Training batches of a world's train split: fresh renders, or step-seeded draws from a pre-rendered pool.

    Either way batch `step` is a pure function of (seed, step), so a resumed run draws fresh batches."""

    def __init__(self, world: str, resolution: int, seed: int, pool: int = 0) -> None:
        from harness.world.registry import get_world

        self.world, self.resolution, self.seed = get_world(world), resolution, seed
        self.scenes: list[Any] = []
        self.images: np.ndarray | None = None
        if pool:
            self.scenes = self.world.sample(pool, seed + 7_777_777, "train")
            self.images = self.world.render_batch(self.scenes, resolution)

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, list[Any]]:
        """(images in [-1, 1], (B, 3, R, R); their scenes)."""
        if self.images is not None:
            idx = np.random.default_rng(self.seed * 1_000_003 + step).integers(len(self.images), size=batch_size)
            images, scenes = self.images[idx], [self.scenes[i] for i in idx]
        else:
            scenes = self.world.sample(batch_size, self.seed * 1_000_003 + step, "train")
            images = self.world.render_batch(scenes, self.resolution)
        return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0, scenes


def optimiser_step(opt: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor, lr: float,
                   ema: torch.nn.Module | None = None, ema_decay: float = 0.0, clip: float = 1.0) -> None:
    """Backward, clip, step at learning rate `lr`, then ema ← decay·ema + (1 − decay)·model."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    if ema is not None:
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(ema_decay).add_(pm.detach(), alpha=1 - ema_decay)


class LossLog:
    """loss.csv (step, loss, seconds) plus a progress line every `every` steps."""

    def __init__(self, path: Any, append: bool = False, every: int = 50) -> None:
        self.file = open(path, "a" if append else "w", newline="")
        self.writer = csv.writer(self.file)
        if not append:
            self.writer.writerow(["step", "loss", "seconds"])
        self.every, self.start = every, time.time()

    def write(self, step: int, loss: float) -> None:
        self.writer.writerow([step, f"{loss:.5f}", f"{time.time() - self.start:.1f}"])
        if step % self.every == 0:
            self.file.flush()
            print(f"step {step} loss {loss:.4f} {time.time() - self.start:.0f}s", flush=True)

    def close(self) -> None:
        self.file.close()


def add_run_args(parser: Any) -> None:
    """--threads and --seed, common to every training script."""
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)


def apply_run_args(args: Any) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)


PREDICTIONS = ("epsilon", "v_prediction")
# DDIM with steps_offset 1 over 1000 training steps indexes timestep n at n = 1000 steps: 999 is the most.
MAX_SAMPLING_STEPS = 999


def build_scheduler(prediction_type: str = "epsilon") -> Any:
    """The world models' noise schedule: linear betas 1e-4..0.02 over 1000 steps, DDIM for sampling."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                         clip_sample=False, set_alpha_to_one=True, steps_offset=1, prediction_type=prediction_type)


def add_prediction_arg(parser: Any) -> None:
    parser.add_argument("--prediction", choices=PREDICTIONS, default="v_prediction",
                        help="the UNet's target. v (= sqrt(a) eps - sqrt(1-a) x0) keeps the high-noise steps, "
                             "where layout and colours are decided, well conditioned; with epsilon the x0 implied "
                             "there is worse than the data mean after CPU-length training")


def noised_and_target(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor,
                      prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, regression target) for DDPM training at cumulative alphas `alpha_bar` (broadcastable)."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    x_t = a * x0 + s * noise
    return x_t, (a * noise - s * x0) if prediction == "v_prediction" else noise


def add_resume_args(parser: Any) -> None:
    parser.add_argument("--resume", action="store_true", help="continue from the EMA weights saved in --out")
    parser.add_argument("--start-step", type=int, default=0, help="data/step offset when resuming (fresh batches)")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                        help="after warm-up: constant, or cosine decay to 0 at --max-steps steps into this run "
                             "(annealing sharpens late-decided detail such as small objects' colours)")


def start_training(unet: torch.nn.Module, scheduler: Any, args: Any, device: str) -> tuple[Any, torch.Tensor, Any, LossLog, Any]:
    """EMA copy, noise schedule, optimiser, loss log and RNG of a fresh or resumed (`args.resume`) run.

    Only EMA weights are ever saved, so a resumed run restarts its raw weights from them."""
    ema = copy.deepcopy(unet).requires_grad_(False)
    alphas = scheduler.alphas_cumprod.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    args.out.mkdir(parents=True, exist_ok=True)
    log = LossLog(args.out / "loss.csv", append=args.resume)
    generator = torch.Generator(device="cpu").manual_seed(args.seed + args.start_step)
    return ema, alphas, opt, log, generator


def rates(args: Any, step: int) -> tuple[float, float]:
    """(learning rate with linear warm-up and optional cosine decay, EMA decay) at `step`.

    A resumed run keeps the full EMA decay."""
    done = step - args.start_step
    lr = args.lr * min(1.0, (done + 1) / args.warmup)
    if args.lr_schedule == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * min(1.0, done / args.max_steps)))
    decay = args.ema if args.resume else min(args.ema, (1 + step) / (10 + step))
    return lr, decay


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """A [-1, 1] (B, 3, R, R) sample batch -> uint8 (B, R, R, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: np.ndarray, path: Path) -> None:
    """uint8 (n, R, R, 3) images as one square PNG grid, upscaled 2x (nearest)."""
    from PIL import Image

    n, r = images.shape[0], images.shape[1]
    side = int(math.ceil(math.sqrt(n)))
    grid = np.zeros((side * r, side * r, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        grid[(i // side) * r:(i // side + 1) * r, (i % side) * r:(i % side + 1) * r] = im
    Image.fromarray(grid).resize((side * r * 2, side * r * 2), Image.Resampling.NEAREST).save(path)
