"""An explicit DDIM continuation for the continuation tests: diffusers' own DDIMScheduler.step and a plain UNet
call, independent of harness.diffusion.denoise."""
from __future__ import annotations

import copy

import torch

from harness.diffusion.backbone import Backbone


@torch.no_grad()
def explicit_continuation(backbone: Backbone, x: torch.Tensor, start: int, num_steps: int, prompt: str | None,
                          guidance: float = 1.0) -> torch.Tensor:
    """Decoded image of DDIM (η = 0) from state x before grid step `start` to t = 0; text models conditioned on
    `prompt` (CFG at `guidance` against the empty prompt when guidance != 1)."""
    sched = copy.deepcopy(backbone.scheduler)
    sched.set_timesteps(num_steps)
    x = x.float()
    emb = backbone.encode_text([prompt] * x.shape[0]) if prompt is not None else None
    empty = backbone.encode_text([""] * x.shape[0]) if prompt is not None else None
    for t in sched.timesteps[start:]:
        inp = x.to(backbone.dtype)
        if emb is None:
            out = backbone.unet(inp, t).sample
        else:
            out = backbone.unet(inp, t, encoder_hidden_states=emb).sample
            if guidance != 1.0:
                out_u = backbone.unet(inp, t, encoder_hidden_states=empty).sample
                out = out_u + guidance * (out - out_u)
        x = sched.step(out[:, : x.shape[1]].float(), t, x, eta=0.0).prev_sample
    return backbone.decode(x)
