"""SD baseline (Wang et al. 2025, arXiv:2502.02225, Table 1 row "SD"; methods-spec §6, assumption A8).

The target prompt is regenerated from the same x_T with the same sampler and guidance as the
original-prompt image, so the edit is a full regeneration under the changed prompt.

Options: none. Strength is not used (the edit is all or nothing); configure `strengths: [1.0]`.
"""
from __future__ import annotations

from typing import Sequence

from harness.config import SamplerConfig
from harness.diffusion.backbone import Backbone
from methods.base import EditMethod, EditOutput, EditRequest, register_method
from methods._common import generate, pairs, target_condition


@register_method("sd")
class StableDiffusionBaseline(EditMethod):
    families = ("text",)

    def edit(self, backbone: Backbone, state: dict, requests: Sequence[EditRequest],
             sampler: SamplerConfig) -> list[EditOutput]:
        originals = generate(backbone, requests, sampler)
        edited = generate(backbone, requests, sampler, cond=target_condition(backbone, requests, sampler))
        return pairs(originals, edited)
