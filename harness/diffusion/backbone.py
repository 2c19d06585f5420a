"""The loaded diffusion model every method works on: UNet, DDIM scheduler and, for text models, a CLIP text
encoder and, for latent models, a VAE.

Two families, as in the papers:
- "unconditional": a pixel-space `UNet2DModel` (google/ddpm-ema-celebahq-256 in the h-space paper);
- "text": a `UNet2DConditionModel` with a text encoder (Stable Diffusion 2.1 in the SVD paper). Whether the
  diffusion state is latent is a separate property, `is_latent` (a VAE is loaded): Stable Diffusion is
  latent, the embedded world's `world-text2img` is a pixel-space text model with no VAE.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

FAMILIES = ("unconditional", "text")


@dataclass
class Backbone:
    name: str
    family: str
    unet: Any
    scheduler: Any
    """A diffusers DDIMScheduler; only its noise schedule (alphas_cumprod) and timestep grid are used."""
    resolution: int
    """Pixel resolution of generated images."""
    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    fingerprint: str = ""
    """Identifies the weights (hash of config and source); part of every cache key."""
    compiled_unet: Any = None
    """torch.compile'd UNet for plain inference (harness.diffusion.compile), or None."""
    compile_timer: Any = None
    """harness.diffusion.compile.CompileTimer of the compiled parts, or None."""
    _text_cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = field(
        default_factory=dict, repr=False, compare=False)
    """Embeddings of the prompts seen so far, one per distinct prompt (see encode_text)."""

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def vae_scale(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    def state_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of the diffusion state x_t: VAE latents for latent models, pixels otherwise."""
        cfg = self.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return (cfg.in_channels, size, size)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Backbone":
        self._text_cache.clear()
        for module in (self.unet, self.vae, self.text_encoder):
            if module is not None:
                module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
        return self

    def eval(self) -> "Backbone":
        for module in (self.unet, self.vae, self.text_encoder):
            if module is not None:
                module.eval().requires_grad_(False)
        return self

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text embeddings (B, 77, D) as Stable Diffusion uses them (last hidden state, max-length padding).

        Each distinct prompt is encoded once, alone, and cached: a batched encoder call can round a row
        differently depending on the other rows (1 ulp on AMD EPYC, amplified by CFG), and a unit's image
        must not depend on its batch-mates' prompts."""
        if self.text_encoder is None:
            raise ValueError(f"model {self.name!r} is unconditional and takes no prompt")
        device, dtype = self.device, self.dtype
        rows = []
        for prompt in prompts:
            key = (prompt, device, dtype)
            if key not in self._text_cache:
                tokens = self.tokenizer(
                    [prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                    truncation=True, return_tensors="pt",
                )
                self._text_cache[key] = self.text_encoder(tokens.input_ids.to(device))[0].to(dtype)
            rows.append(self._text_cache[key])
        return torch.cat(rows) if rows else torch.empty(0)

    def prompt_too_long(self, prompt: str) -> bool:
        if self.tokenizer is None:
            return False
        return len(self.tokenizer(prompt).input_ids) > self.tokenizer.model_max_length

    @torch.no_grad()
    def decode(self, state: torch.Tensor) -> torch.Tensor:
        """Diffusion state x_0 -> images in [0, 1], float32 (B, 3, H, W)."""
        if self.is_latent:
            images = self.vae.decode(state.to(self.vae.dtype) / self.vae_scale).sample
        else:
            images = state
        return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, H, W) -> diffusion state x_0 (VAE mean for latent models)."""
        x = images.to(self.device, self.dtype) * 2.0 - 1.0
        if self.is_latent:
            return self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean * self.vae_scale
        return x
