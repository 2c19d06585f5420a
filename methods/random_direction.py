"""Random h-space direction: the minimal complete example method (and a control for learned directions).

Haas et al. (FG 2024, Fig. 4b) use random h-space directions as the control that shows PCA
directions are meaningful. Here: one fixed random unit direction in h-space, drawn in `prepare`
from the preparation seed, added at every step as Δh_t = strength · scale · v.

Options: scale (float, default 1.0): norm of Δh at strength 1, in units of ‖v‖ = 1; strength_scale and
window, shared by every h-space method (methods/_hspace.py; with strength_scale "relative" the shift is
strength · ‖h_t‖ along v and `scale` only matters through its sign).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from harness.config import SamplerConfig
from harness.diffusion import h_shape
from harness.diffusion.backbone import Backbone
from methods.base import EditMethod, EditOutput, EditRequest, PrepareContext, register_method
from methods._common import per_request_delta
from methods._hspace import HSpaceEditOptions, edit_with_deltas


@dataclass(frozen=True)
class RandomDirectionOptions(HSpaceEditOptions):
    scale: float = 1.0


@register_method("random-direction")
class RandomDirection(EditMethod):
    Options = RandomDirectionOptions

    def prepare(self, backbone: Backbone, ctx: PrepareContext) -> dict:
        g = torch.Generator().manual_seed(ctx.seed)
        v = torch.randn(h_shape(backbone), generator=g)
        return {"direction": v / v.norm()}

    def edit(self, backbone: Backbone, state: dict, requests: Sequence[EditRequest],
             sampler: SamplerConfig) -> list[EditOutput]:
        v = state["direction"] * self.options.scale
        delta = per_request_delta(v, [r.strength for r in requests])        # (B, *h), the same at every step
        steps = delta.unsqueeze(1).expand(-1, sampler.num_steps, *delta.shape[1:])
        return edit_with_deltas(backbone, requests, sampler, steps, spec=self.options)
