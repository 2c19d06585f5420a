"""Shared diffusion pieces every method uses: backbone, DDIM loop with step control, h-space hook, AD helpers."""
from harness.diffusion.backbone import Backbone
from harness.diffusion.hspace import MidBlockHook
from harness.diffusion.sampler import (
    Condition, Schedule, Trace, ddim_invert, ddim_step, denoise, h_shape, initial_noise, make_condition, noise_to,
    predict_eps, predict_eps_parts, strength_start,
)

__all__ = [
    "Backbone", "MidBlockHook", "h_shape", "Condition", "Schedule", "Trace", "ddim_invert", "ddim_step",
    "denoise", "initial_noise", "make_condition", "noise_to", "predict_eps", "predict_eps_parts",
    "strength_start",
]
