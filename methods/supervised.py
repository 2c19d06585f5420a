"""Supervised h-space directions and projection disentanglement (Haas et al., FG 2024, Sec. V, eqs. 11–12;
methods-spec §5).

prepare, once per (model, suite) and per distinct item prompt for text models:
1. Draw M fresh samples with the run's sampler (η > 0 with each sample's fixed z_{T:1}; CFG and the item's
   prompt for text models) and score every image with the attribute scorer, once per attribute, against
   the suite's attribute prompts (suite.attributes[a].positive / .negative). One pass serves all attributes.
2. Per attribute: positives = the n highest scores, negatives = the n lowest (ties: lower sample index).
3. Eq. (11): v = mean(h⁺_{T:1}) − mean(h⁻_{T:1}) over the whole (T, *h) trajectory. The selected samples are
   regenerated from their seeds with h recorded, so memory is O(attributes·T·d), not O(M·T·d) (the paper's
   code uses M = 10000); the regenerated trajectories equal the scored ones up to batch-composition
   rounding.
4. Eq. (12), if `disentangle_from` is set: v ← [I − V(VᵀV)⁻¹Vᵀ] v0, with V the other attributes' directions,
   inner products over the whole flattened h_{T:1}, solved through the normal equations, not renormalised.
Directions are computed for every attribute the suite's items use (plus any named in `disentangle_from`);
both the original and the disentangled directions are kept in the state.

edit: Δh_t = γ · v_t at every step (γ = the request's strength), v the item attribute's direction
(the disentangled one when `disentangle_from` is set).

Options:
- n_samples (int, 200): M, samples annotated (paper code 10000; demo 100).
- n_examples (int, 20): n, positives and negatives per attribute (paper code 100 of 10000; demo 10 of 100);
  2n ≤ M.
- scorer (ScorerSpec, {kind: clip}): the attribute scorer of methods/_scorers.py (zero-shot CLIP with the
  attribute prompts replaces the paper's AnyCost/Hopenet classifiers).
- disentangle_from (null | "all_others" | list of attributes | mapping attribute -> list, null): the
  directions projected out of each attribute's direction; "all_others" = every other attribute the suite's
  items use; a list applies to every attribute (an attribute is never projected out of itself); a mapping
  names them per attribute (attributes not in it keep their original direction).
- injection ("plain" | "asyrp", "plain"): how Δh enters the DDIM step.
- strength_scale ("absolute" | "relative", "absolute"), window ([lo, hi], [0, 1]): shared by every h-space
  method (methods/_hspace.py): γ in the method's units or as a fraction of ‖h_t‖; the steps that get Δh.
- batch_size (int, 16): samples denoised together.
- real_examples (mapping attribute -> {positive: folder, negative: folder, transform}, {}): learn that
  attribute's direction from labelled real images instead of scored samples (Haas et al. SM F: DDIM-invert
  each image, record h_{T:1} along its η = 0 regeneration, v = mean(h⁺) − mean(h⁻)). Folders are relative
  to the working directory; every image file in them is used.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from harness.config import SamplerConfig
from harness.diffusion.backbone import Backbone
from harness.errors import ConfigError
from methods.base import EditMethod, EditOutput, EditRequest, PrepareContext, register_method
from methods._hspace import (
    HSpaceEditOptions, edit_with_deltas, project_out, prompt_groups, prompt_key, record_batches, record_real,
    require_attributes, sample_seeds,
)
from methods._scorers import ScorerSpec, make_scorer, score_attribute

DisentangleFrom = Literal["all_others"] | tuple[str, ...] | dict[str, tuple[str, ...]] | None


@dataclass(frozen=True)
class RealExamples:
    positive: str
    negative: str
    transform: Literal["center-crop", "resize"] = "center-crop"


@dataclass(frozen=True)
class SupervisedOptions(HSpaceEditOptions):
    n_samples: int = 200
    n_examples: int = 20
    scorer: ScorerSpec = field(default_factory=ScorerSpec)
    disentangle_from: DisentangleFrom = None
    injection: Literal["plain", "asyrp"] = "plain"
    batch_size: int = 16
    real_examples: dict[str, RealExamples] = field(default_factory=dict)

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        for name in ("n_samples", "n_examples", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name}", getattr(self, name), "an integer >= 1")
        if 2 * self.n_examples > self.n_samples:
            raise ConfigError(f"{prefix}.n_examples", self.n_examples, f"at most n_samples/2 = {self.n_samples // 2}",
                              "positives and negatives must not overlap")


def select_examples(scores: torch.Tensor, n: int) -> tuple[list[int], list[int]]:
    """Indices of the n highest (positives) and n lowest (negatives) scores; ties go to the lower index."""
    order_pos = torch.sort(-scores.double(), stable=True).indices
    order_neg = torch.sort(scores.double(), stable=True).indices
    return order_pos[:n].tolist(), order_neg[:n].tolist()


def removal_sets(attributes: Sequence[str], spec: DisentangleFrom) -> dict[str, list[str]] | None:
    """For each attribute, the attributes whose directions eq. (12) projects out (None: no disentangling)."""
    if spec is None:
        return None
    if spec == "all_others":
        return {a: [b for b in attributes if b != a] for a in attributes}
    if isinstance(spec, dict):
        return {a: [b for b in spec.get(a, ()) if b != a] for a in attributes}
    return {a: [b for b in spec if b != a] for a in attributes}


def named_attributes(spec: DisentangleFrom) -> list[str]:
    if spec is None or spec == "all_others":
        return []
    if isinstance(spec, dict):
        return list(spec) + [b for names in spec.values() for b in names]
    return list(spec)


@register_method("supervised")
class Supervised(EditMethod):
    Options = SupervisedOptions
    needs_prepare = True

    def prepare(self, backbone: Backbone, ctx: PrepareContext) -> dict:
        opts = self.options
        used = list(dict.fromkeys(it.attribute for it in ctx.suite.items))
        require_attributes(ctx.suite, named_attributes(opts.disentangle_from), "options.disentangle_from")
        attributes = list(dict.fromkeys(used + named_attributes(opts.disentangle_from)))
        removal = removal_sets(attributes, opts.disentangle_from)
        scored = [a for a in attributes if a not in opts.real_examples]
        scorer = make_scorer(opts.scorer, device=backbone.device) if scored else None
        seeds = sample_seeds(ctx.seed, opts.n_samples, "supervised")
        groups = {}
        for key in prompt_groups(backbone, ctx.suite):
            groups[key] = self._group(backbone, ctx, key, seeds, attributes, removal, scorer)
        return {"groups": groups, "num_steps": ctx.sampler.num_steps, "attributes": attributes}

    def _group(self, backbone: Backbone, ctx: PrepareContext, prompt: str, seeds: list[int], attributes: list[str],
               removal: dict[str, list[str]] | None, scorer) -> dict:
        opts = self.options
        real = {a: self._real_direction(backbone, ctx, prompt, opts.real_examples[a])
                for a in attributes if a in opts.real_examples}
        attributes_scored = [a for a in attributes if a not in real]
        group = self._scored_group(backbone, ctx, prompt, seeds, attributes_scored, scorer) if attributes_scored \
            else {"directions": {}, "positives": {}, "negatives": {}, "scores": {}}
        group["directions"].update({a: v.float().cpu() for a, v in real.items()})
        v = {**group.pop("exact", {}), **real}  # float64, before the float32 rounding of the stored directions
        if removal is not None:
            group["disentangled"] = {a: project_out(v[a], [v[b] for b in removal[a]]).float().cpu()
                                     for a in attributes}
        return group

    def _real_direction(self, backbone: Backbone, ctx: PrepareContext, prompt: str, spec: RealExamples) -> torch.Tensor:
        from pathlib import Path

        from harness.images import load_image

        def folder_h(folder: str) -> torch.Tensor:
            files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            if not files:
                raise ValueError(f"no images in {folder} (options.real_examples)")
            images = torch.stack([load_image(f, backbone.resolution, spec.transform)[0] for f in files])
            return record_real(backbone, images, ctx.sampler, prompt, self.options.batch_size).double()

        return folder_h(spec.positive).mean(0) - folder_h(spec.negative).mean(0)

    def _scored_group(self, backbone: Backbone, ctx: PrepareContext, prompt: str, seeds: list[int],
                      attributes: list[str], scorer) -> dict:
        opts = self.options
        # Pass 1: images only, scored for every attribute.
        scores = {a: torch.empty(len(seeds), dtype=torch.float64) for a in attributes}
        for sl, _, images in record_batches(backbone, seeds, ctx.sampler, prompt, opts.batch_size,
                                            decode=True, record_h=False):
            for a in attributes:
                scores[a][sl] = score_attribute(scorer, images, ctx.suite.attributes[a]).double().cpu()
        chosen = {a: select_examples(scores[a], opts.n_examples) for a in attributes}
        # Pass 2: regenerate the chosen samples with h recorded; v_a = Σ_i w_{i,a} h_i, w = ±1/n.
        union = sorted({i for pos, neg in chosen.values() for i in pos + neg})
        weights = torch.zeros(len(union), len(attributes), dtype=torch.float64)
        row = {i: r for r, i in enumerate(union)}
        for k, a in enumerate(attributes):
            pos, neg = chosen[a]
            weights[[row[i] for i in pos], k] += 1.0 / len(pos)
            weights[[row[i] for i in neg], k] -= 1.0 / len(neg)
        total = None
        for sl, hs, _ in record_batches(backbone, [seeds[i] for i in union], ctx.sampler, prompt, opts.batch_size):
            assert hs is not None  # record_batches records h unless told not to
            w = weights[sl].to(hs.device)
            part = torch.einsum("ba,b...->a...", w, hs.double())
            total = part if total is None else total + part
        if total is None:
            raise ValueError("no samples to average: every attribute's seed list is empty")
        v = {a: total[k] for k, a in enumerate(attributes)}
        group = {
            "directions": {a: v[a].float().cpu() for a in attributes},
            "positives": {a: chosen[a][0] for a in attributes},
            "negatives": {a: chosen[a][1] for a in attributes},
            "scores": {a: scores[a].float() for a in attributes},
            "exact": v,
        }
        return group

    def edit(self, backbone: Backbone, state: dict, requests: Sequence[EditRequest],
             sampler: SamplerConfig) -> list[EditOutput]:
        out, info = [], []
        for r in requests:
            group = state["groups"][prompt_key(backbone, r.item)]
            table = group.get("disentangled", group["directions"])
            v = table[r.item.attribute]
            out.append(r.strength * v)
            info.append({"attribute": r.item.attribute, "disentangled": "disentangled" in group,
                         "direction_norm": float(v.norm())})
        return edit_with_deltas(backbone, requests, sampler, torch.stack(out), self.options.injection, info,
                                spec=self.options)
