"""Asyrp (Kwon et al., ICLR 2023, "Diffusion models already have a semantic latent space"): a small network
f_t(h) per attribute, trained with the CLIP directional loss, edits h-space through the asymmetric reverse process.

Checked against kwonminki/Asyrp_official (`diffusion_latent.py` run_training / run_test / save_image,
`utils/diffusion_utils.py` denoising_step, `models/ddpm/diffusion.py` DeltaBlock, `losses/clip_loss.py`,
`script_train.sh`, `main.py`); none of its code is copied here.

prepare (once per model and suite), per attribute the suite's items use:
1. Training images: `n_train_images` fresh seeds (never the evaluated ones); x_T ~ N(0, I) and the source image
   x_0 = its η = 0 DDIM sample on the training grid (official `random_noise_pairs` with `--use_x0_tensor`).
2. f_t = a "DeltaBlock": 1x1 conv (C -> C) + Linear(SiLU(temb_t)) -> GroupNorm -> SiLU -> 1x1 conv, on h (the
   mid-block output, C x H x W), with temb_t the UNet's own timestep embedding (`unet.time_proj` ->
   `unet.time_embedding`, frozen), as the official block on the DDPM's temb. PyTorch's default init, seeded.
3. For each pass over the images (`n_iter`), each batch, and each training step t in the editing interval
   (from T down to t_edit), one SGD step on
       L = clip_weight · (−log((2 − L_direction) / 2)) + l1_weight · cos(E_T(src), E_T(trg)) · |P_t^edit − P_t^orig|₁
   with L_direction the CLIP directional loss (methods/_clip_loss.py) between the source image x_0 and
   P_t^edit = P_t(ε(x_t | h_t + f_t(h_t))), the x_0-prediction of the edited trajectory, and P_t^orig the
   x_0-prediction of the unedited trajectory at the same step (official `l1_loss_with_x0` False); |·|₁ is the
   mean absolute difference. The regulariser is on the x_0-predictions (the paper's λ_recon term), not an L1
   penalty on Δh itself: the official code has none on Δh. The edited trajectory steps asymmetrically (below) and is detached between steps,
   so each SGD step differentiates one step only, as the official loop does. Source/target texts: the suite
   attribute's negative and positive prompts (`prompts: attribute`), or the item's prompt and target prompt
   (`prompts: item`, one network per item).

edit: the original is the run's shared unedited sample. The edit runs the same x_T through the asymmetric
reverse process (Asyrp eq. 6; official `denoising_step` with `index` set):
    x_{t−1} = sqrt(ᾱ_{t−1}) P_t(ε^θ(x_t | h_t + Δh_t)) + D_t(ε^θ(x_t)) + σ_t z_t
i.e. P_t from the edited ε, D_t from the unedited ε at the same x_t, with
    Δh_t = γ · (train_steps / num_steps) · f_t(h_t)   for t in the editing interval [t_edit, T], else 0,
γ the request's strength and train_steps / num_steps the official test-time factor `n_train_step /
n_test_step · hs_coeff_delta_h` (each step's share of the edit grows when fewer steps run). f_t is evaluated on
the h_t the same forward pass produced (the MidBlockHook takes a function h -> Δh), as the official computes
h once and decodes both h and h + Δh. Quality boosting (`t_boost` > 0): the edited image's steps with
t < t_boost·T run with η = 1 (official `eta=1.0 if t < t_addnoise`), with noise drawn per request
(`request_noise`), independent of its batch.

Conventions that differ from the official code (each on purpose):
- Timestep grids: diffusers' DDIM grid of the backbone's scheduler (leading spacing, steps_offset) for training
  (`train_steps` steps) and editing (the run's sampler), not the official `linspace(0, 1, n) · 999` lists;
  t_edit and t_boost are fractions of T (window [t_edit, 1]) compared with the grid's t (t >= t_edit·T edits,
  as the official `t >= t_edit`).
- t_edit and t_boost are user-defined (the official `--user_defined_t_edit 500 --user_defined_t_addnoise 200`
  path), not derived from LPIPS(x_0, P_t) curves (their `lpips_edit_th 0.33 · cos`, `lpips_addnoise_th`):
  the harness has no AlexNet LPIPS weights offline.
- Quality boosting is off by default (t_boost = 0; the paper's 0.2 is an option): the harness's originals are
  the shared unedited η = 0 samples (the official original process does not add noise either,
  `origin_process_addnoise` False), so boosting's fresh noise would count against preservation as if it were
  an edit. A request with strength 0 is never boosted, so strength 0 is the original byte for byte.
- CLIP: the configured model through metrics.clip (the world CLIP on the worlds) instead of OpenAI CLIP
  ViT-B/16; the text direction over `templates` (default the prompt alone) instead of the 80 ImageNet
  templates (see methods/_clip_loss.py); CLIP's input is P_t mapped [−1, 1] -> [0, 1] without clamping, as the
  official `Normalize(mean=-1, std=2)`.
- Strength γ multiplies Δh (the official `hs_coeff_delta_h`); a negative γ reverses it (not a trained
  direction: the network learns source -> target only). `strength_scale: relative` (shared by every h-space
  method) sets ‖Δh_t‖ = |γ|·‖h_t‖ per sample and step, keeping f_t's direction. The inherited `window` is
  the editing interval; its default is [0.5, 1] (t_edit = 500 of 1000, the official script's value).
- GroupNorm groups: gcd(32, C) (the official 32 needs C divisible by 32; tiny models have fewer channels).
- Cheap defaults so that preparation runs in seconds on a CPU (4 images, 1 pass, the run's step count).
  The paper's settings (official script_train.sh): n_train_images 100, n_iter 5 (StepLR step 3, γ 0.1),
  train_steps 40-50, batch_size 1, lr 0.5 (SGD), clip_weight 1, l1_weight 3, window [0.5, 1], t_boost 0.2,
  clip ViT-B/16 with the ImageNet templates.
Family: unconditional (UNet2DModel) only, as the paper; the edited pass carries no prompt.

Options:
- window ([lo, hi], [0.5, 1.0]): editing interval as fractions of T (t_edit = lo); hi < 1 also allowed.
- t_boost (float, 0.0): quality-boosting interval t < t_boost·T with η = 1; 0 = off.
- clip (ClipSpec, open_clip ViT-B-16): the CLIP of the directional loss ({backend, model, pretrained, ...}, as
  the `clip` metric; open_clip needs a local `pretrained` file; on the worlds {backend: transformers, model:
  checkpoints/world-clip}).
- prompts ("attribute" | "item", "attribute"), templates (list of "…{}…", ["{}"]).
- n_train_images (4), n_iter (1), train_steps (null = the run's num_steps), batch_size (1), lr (0.5),
  lr_step (3), lr_gamma (0.1), clip_weight (1.0), l1_weight (3.0).
- strength_scale ("absolute" | "relative", "absolute").
Each row's info: the network key, its final training loss, whether the image was boosted, and the mean
‖Δh_t‖/‖h_t‖ over the edited steps (the edit's size on the common scale).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from harness.config import SamplerConfig
from harness.diffusion import MidBlockHook, Schedule, denoise, initial_noise, predict_eps
from harness.diffusion.backbone import Backbone
from harness.diffusion.sampler import DeltaH, ddim_step, pred_x0
from harness.errors import ConfigError
from harness.hashing import stable_seed
from harness.suites import Suite, SuiteItem
from methods.base import EditMethod, EditOutput, EditRequest, PrepareContext, register_method
from methods._clip_loss import ClipSpec, DirectionalClip, directional_loss, load_directional_clip
from methods._common import generate, pairs, request_noise, start_noise
from methods._hspace import HSpaceEditOptions, sample_seeds, steps_in_window


@dataclass(frozen=True)
class AsyrpOptions(HSpaceEditOptions):
    window: tuple[float, float] = (0.5, 1.0)
    t_boost: float = 0.0
    clip: ClipSpec = field(default_factory=ClipSpec)
    prompts: Literal["attribute", "item"] = "attribute"
    templates: tuple[str, ...] = ("{}",)
    n_train_images: int = 4
    n_iter: int = 1
    train_steps: int | None = None
    batch_size: int = 1
    lr: float = 0.5
    lr_step: int = 3
    lr_gamma: float = 0.1
    clip_weight: float = 1.0
    l1_weight: float = 3.0

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        for name in ("n_train_images", "n_iter", "batch_size", "lr_step"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name}", getattr(self, name), "an integer >= 1")
        if self.train_steps is not None and self.train_steps < 1:
            raise ConfigError(f"{prefix}.train_steps", self.train_steps, "null (the run's num_steps) or >= 1")
        if not 0.0 <= self.t_boost <= 1.0:
            raise ConfigError(f"{prefix}.t_boost", self.t_boost, "a fraction of T in [0, 1]", "0 turns boosting off")
        for name in ("lr", "lr_gamma"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{prefix}.{name}", getattr(self, name), "a number > 0")
        for name in ("clip_weight", "l1_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{prefix}.{name}", getattr(self, name), "a number >= 0")
        if not self.templates or any(t.count("{}") != 1 for t in self.templates):
            raise ConfigError(f"{prefix}.templates", list(self.templates), "templates with exactly one {} each",
                              'e.g. ["{}", "a photo of {}."]')
        self.clip.validate(f"{prefix}.clip")


# -- f_t: the DeltaBlock -------------------------------------------------------------------------------

class DeltaBlock(nn.Module):
    """f_t(h): 1x1 conv -> + Linear(SiLU(temb_t)) -> GroupNorm -> SiLU -> 1x1 conv (official DeltaBlock layout)."""

    def __init__(self, channels: int, temb_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=1)
        self.temb_proj = nn.Linear(temb_dim, channels)
        self.norm = nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6, affine=True)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = self.conv1(h) + self.temb_proj(nn.functional.silu(temb))[:, :, None, None]
        return self.conv2(nn.functional.silu(self.norm(x)))


@torch.no_grad()
def unet_temb(backbone: Backbone, t: int) -> torch.Tensor:
    """The UNet's own timestep embedding at t (1, D): what its resnets see, and what f_t is conditioned on."""
    unet = backbone.unet
    ts = torch.tensor([t], device=backbone.device)
    return unet.time_embedding(unet.time_proj(ts).to(backbone.dtype))


def build_net(entry: dict, backbone: Backbone) -> DeltaBlock:
    """The trained f of one state entry, on the backbone's device and dtype (its weights cast to that dtype)."""
    net = DeltaBlock(entry["channels"], entry["temb_dim"]).to(backbone.device, backbone.dtype)
    net.load_state_dict(entry["weights"])
    return net.eval().requires_grad_(False)


# -- the objective ---------------------------------------------------------------------------------------

def state_images(backbone: Backbone, x0: torch.Tensor) -> torch.Tensor:
    """States x_0 -> images in [0, 1] with gradient and without clamping (official Normalize(-1, 2) before CLIP)."""
    if backbone.is_latent:
        x0 = backbone.vae.decode(x0.to(backbone.vae.dtype) / backbone.vae_scale).sample
    return (x0.float() + 1.0) / 2.0


def asyrp_objective(source_features: torch.Tensor, edited_features: torch.Tensor, direction: torch.Tensor,
                    x0_edit: torch.Tensor, x0_orig: torch.Tensor, text_cosine: float, clip_weight: float,
                    l1_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Asyrp's training loss at one step (official run_training): CLIP term −log((2 − L_dir)/2), L_dir averaged
    over the batch, plus l1_weight · cos(src, trg texts) · mean|P_t^edit − P_t^orig|. Returns (loss, parts)."""
    l_dir = directional_loss(source_features, edited_features, direction).mean()
    l_clip = -torch.log((2.0 - l_dir) / 2.0)
    l1 = (x0_edit - x0_orig).abs().mean()
    loss = clip_weight * l_clip + l1_weight * text_cosine * l1
    return loss, {"direction": float(l_dir.detach()), "clip": float(l_clip.detach()), "l1": float(l1.detach())}


@dataclass
class TrainingTarget:
    source_features: torch.Tensor
    """CLIP image embeddings of the training images' unedited samples (N, d)."""
    direction: torch.Tensor
    text_cosine: float


def training_step(backbone: Backbone, net: DeltaBlock, clip: DirectionalClip, schedule: Schedule, i: int,
                  x_edit: torch.Tensor, x_orig: torch.Tensor, source_features: torch.Tensor, target: TrainingTarget,
                  clip_weight: float, l1_weight: float) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
    """Loss of grid step i (differentiable in net's parameters) and the next states of both trajectories (η = 0).

    x_edit: the edited trajectory's state (detached), x_orig: the unedited one's."""
    t = schedule.timesteps[i]
    temb = unet_temb(backbone, t)
    with MidBlockHook(backbone.unet) as hook:
        with torch.no_grad():
            eps_plain = predict_eps(backbone, x_edit, t, None)   # D_t's ε: unedited, at the edited state
        hook.delta = lambda h: net(h, temb)                             # f_t on this pass's own h_t
        eps_edit = predict_eps(backbone, x_edit, t, None)
    with torch.no_grad():
        eps_orig = predict_eps(backbone, x_orig, t, None)
    x0_edit, x0_orig = pred_x0(schedule, i, x_edit, eps_edit), pred_x0(schedule, i, x_orig, eps_orig)
    edited_features = clip.image_features(state_images(backbone, x0_edit))
    loss, parts = asyrp_objective(source_features, edited_features, target.direction, x0_edit, x0_orig,
                                  target.text_cosine, clip_weight, l1_weight)
    with torch.no_grad():
        x_edit_next = ddim_step(schedule, i, x_edit, eps_edit.detach(), eps_dir=eps_plain)
        x_orig_next = ddim_step(schedule, i, x_orig, eps_orig)
    return loss, parts, x_edit_next, x_orig_next


def train_delta_block(backbone: Backbone, net: DeltaBlock, clip: DirectionalClip, schedule: Schedule,
                      inside: Sequence[bool], x_T: torch.Tensor, target: TrainingTarget,
                      opts: AsyrpOptions) -> list[list[float]]:
    """SGD on f over the training images; returns the losses, one list per pass (n_iter), in step order."""
    optimizer = torch.optim.SGD(net.parameters(), lr=opts.lr, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=opts.lr_step, gamma=opts.lr_gamma)
    last = max((i for i, inn in enumerate(inside) if inn), default=-1)
    history = []
    for _ in range(opts.n_iter):
        losses = []
        for start in range(0, x_T.shape[0], opts.batch_size):
            sl = slice(start, start + opts.batch_size)
            x_edit = x_orig = x_T[sl]
            for i in range(last + 1):
                if not inside[i]:  # before the interval (window hi < 1): both run unedited
                    with torch.no_grad():
                        x_edit = x_orig = denoise(backbone, x_orig, schedule, None, start=i, stop=i + 1)
                    continue
                optimizer.zero_grad()
                loss, _, x_edit, x_orig = training_step(backbone, net, clip, schedule, i, x_edit, x_orig,
                                                        target.source_features[sl], target, opts.clip_weight,
                                                        opts.l1_weight)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
        lr_schedule.step()
        history.append(losses)
    return history


# -- which texts each network learns ------------------------------------------------------------------------

def text_pairs(suite: Suite, mode: str) -> dict[str, tuple[str, str]]:
    """Network key -> (source text, target text) for every item of the suite."""
    out: dict[str, tuple[str, str]] = {}
    for item in suite.items:
        attr = suite.attributes[item.attribute]
        if mode == "attribute":
            out.setdefault(item.attribute, (attr.negative, attr.positive))
        else:
            out.setdefault(item.id, (item.prompt, item.target_prompt or attr.positive))
    return out


def net_key(item: SuiteItem, mode: str) -> str:
    return item.attribute if mode == "attribute" else item.id


# -- the method ------------------------------------------------------------------------------------------------

@register_method("asyrp")
class Asyrp(EditMethod):
    Options = AsyrpOptions
    families = ("unconditional",)

    def prepare(self, backbone: Backbone, ctx: PrepareContext) -> dict:
        opts = self.options
        train_steps = opts.train_steps or ctx.sampler.num_steps
        schedule = Schedule.from_backbone(backbone, train_steps)
        inside = steps_in_window(schedule, opts.window)
        if not any(inside):
            raise ConfigError("options.window", list(opts.window), "a window containing a training grid step",
                              f"the {train_steps}-step grid is {list(schedule.timesteps)}")
        clip = load_directional_clip(opts.clip, backbone.device)
        seeds = sample_seeds(ctx.seed, opts.n_train_images, "asyrp")
        x_T, _ = initial_noise(seeds, backbone.state_shape(), train_steps, 0.0, device=backbone.device)
        with torch.no_grad():
            x0 = denoise(backbone, x_T, schedule, None)
            source_features = clip.image_features(state_images(backbone, x0))
            temb_dim = unet_temb(backbone, schedule.timesteps[0]).shape[-1]
        channels = self._h_channels(backbone, x_T[:1], schedule.timesteps[0])
        nets = {}
        for key, (source, trg) in text_pairs(ctx.suite, opts.prompts).items():
            target = TrainingTarget(source_features, clip.text_direction(source, trg, opts.templates),
                                    clip.text_cosine(source, trg))
            with torch.random.fork_rng(devices=[]):  # seeded init that leaves the global RNG as found
                torch.manual_seed(stable_seed("asyrp-init", ctx.seed, key))
                net = DeltaBlock(channels, temb_dim)
            net = net.to(backbone.device, backbone.dtype).train()
            with torch.enable_grad():
                history = train_delta_block(backbone, net, clip, schedule, inside, x_T, target, opts)
            nets[key] = {
                "weights": {k: v.detach().float().cpu().clone() for k, v in net.state_dict().items()},
                "channels": channels, "temb_dim": temb_dim, "source": source, "target": trg,
                "text_cosine": target.text_cosine,
                "losses": torch.tensor(history, dtype=torch.float32),
            }
        return {"nets": nets, "train_steps": train_steps}

    @staticmethod
    def _h_channels(backbone: Backbone, x: torch.Tensor, t: int) -> int:
        with MidBlockHook(backbone.unet) as hook, torch.no_grad():
            predict_eps(backbone, x, t, None)
            assert hook.raw is not None, "the mid-block hook records h on every UNet call"
            return int(hook.raw.shape[1])

    def edit(self, backbone: Backbone, state: dict, requests: Sequence[EditRequest],
             sampler: SamplerConfig) -> list[EditOutput]:
        opts = self.options
        keys = [net_key(r.item, opts.prompts) for r in requests]
        missing = sorted(set(keys) - set(state["nets"]))
        if missing:
            raise KeyError(f"asyrp has no trained network for {missing} (prepared for {sorted(state['nets'])}); "
                           "prepare on the suite being edited")
        nets = {k: build_net(state["nets"][k], backbone) for k in dict.fromkeys(keys)}
        schedule = Schedule.from_backbone(backbone, sampler.num_steps)
        inside = steps_in_window(schedule, opts.window)
        factor = state["train_steps"] / sampler.num_steps
        big_t = schedule.num_train_timesteps
        boost_from = next((i for i, t in enumerate(schedule.timesteps) if t < opts.t_boost * big_t), len(schedule))

        originals = generate(backbone, requests, sampler)
        x_T, noises = start_noise(backbone, requests, sampler)
        ratios = torch.zeros(len(requests), dtype=torch.float64)
        rows = list(range(len(requests)))
        deltas = self._deltas(backbone, nets, keys, requests, schedule, inside, factor, ratios)
        x = denoise(backbone, x_T, schedule, None, stop=boost_from, eta=sampler.eta, noises=noises,
                    delta_h=deltas(rows), injection="asyrp")
        boosted = [b for b in rows if requests[b].strength != 0 and boost_from < len(schedule)]
        if boost_from < len(schedule):
            plain = [b for b in rows if b not in boosted]
            boost_noise = request_noise(requests, backbone.state_shape(), "asyrp-boost", n=sampler.num_steps,
                                        device=backbone.device)
            for subset, eta, z in ((boosted, 1.0, boost_noise), (plain, sampler.eta, noises)):
                if subset:
                    idx = torch.tensor(subset, device=x.device)
                    x[idx] = denoise(backbone, x[idx], schedule, None, start=boost_from, eta=eta,
                                     noises=None if z is None else z[idx], delta_h=deltas(subset), injection="asyrp")
        edited = backbone.decode(x)
        n_edit = max(1, sum(inside))
        info = [{"network": k, "final_loss": float(state["nets"][k]["losses"].reshape(-1)[-1]),
                 "boosted": b in boosted, "dh_ratio": float(ratios[b]) / n_edit} for b, k in enumerate(keys)]
        return pairs(originals, edited, info)

    def _deltas(self, backbone: Backbone, nets: dict[str, DeltaBlock], keys: list[str],
                requests: Sequence[EditRequest], schedule: Schedule, inside: Sequence[bool], factor: float,
                ratios: torch.Tensor) -> Callable[[list[int]], DeltaH]:
        """deltas(rows)(i): the function h -> Δh_t of grid step i for the requests `rows` (None outside the interval).

        Δh of sample b = γ_b · factor · f_{key_b}(h_b) (relative: rescaled to |γ_b|·‖h_b‖); exact zeros for γ_b = 0,
        so those samples follow the unedited trajectory byte for byte."""
        relative = self.options.strength_scale == "relative"

        def for_rows(rows: list[int]) -> DeltaH:
            gammas = [float(requests[b].strength) for b in rows]

            def at(i: int):
                if not inside[i]:
                    return None
                temb = unet_temb(backbone, schedule.timesteps[i])

                def delta(h: torch.Tensor) -> torch.Tensor:
                    out = torch.zeros_like(h)
                    for key, net in nets.items():
                        sel = [j for j, b in enumerate(rows) if keys[b] == key and gammas[j] != 0]
                        if not sel:
                            continue
                        idx = torch.tensor(sel, device=h.device)
                        d = factor * net(h[idx], temb)
                        g = torch.tensor([gammas[j] for j in sel], dtype=h.dtype, device=h.device).view(-1, 1, 1, 1)
                        if relative:
                            dn = d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                            hn = h[idx].flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                            d = torch.where(dn > 0, d / dn.clamp_min(torch.finfo(d.dtype).tiny) * hn, torch.zeros_like(d))
                        out[idx] = g * d
                    for j, b in enumerate(rows):
                        ratios[b] += float(out[j].norm() / h[j].norm().clamp_min(1e-30))
                    return out

                return delta

            return at

        return for_rows
