"""Prompt-to-Prompt (Hertz et al., ICLR 2023, arXiv:2208.01626): edit by generating the source and the target prompt
from the same noise, with the target branch's attention maps taken from the source branch.

For a request with source prompt Q (the item's prompt) and target R (its target prompt), both branches start from
the request's x_T (a real image's DDIM inversion; the source branch is then its DDIM reconstruction, the unit's
original) and run in one UNet batch per step, laid out as the official code does: [uncond·Q, uncond·R, Q, R] (no
uncond rows when guidance is 1). Inside the conditional rows, at grid step i, every attention layer (diffusers
attention processors, `harness.diffusion.attention`; the backbone's processors are put back afterwards) replaces
the target's probabilities P_R with ones built from the source's P_Q:
- cross-attention, inside the cross window (α_i = 1):  P_R ← (P_Q · M + P_R ⊙ (1 − a)) ⊙ e, where
  - word swap ("replace", `AttentionReplace`): M is the word-level replacement mapper (a source word's tokens onto
    the target word's tokens; 1/n weights when the target word has n ≠ source tokens), a = 1;
  - refinement ("refine", `AttentionRefine`): M[w, n] = 1 where the global token alignment maps target token n to
    source token w (Needleman-Wunsch on token ids, gap 0, match 1, mismatch −1, ties broken as `seq_aligner`),
    a[n] = 1 for aligned target tokens, 0 for new ones (those keep their own attention);
  - re-weighting (`AttentionReweight`, here on top of either mapper): e[n] = `reweight` for the tokens of the
    reweighted words of R, else 1 (e = 1 everywhere by default, no re-weighting);
  outside the window P_R is left as computed;
- self-attention, inside the self window, for layers with at most `self_replace_max_tokens` keys: P_R ← P_Q;
- local blending (`local_blend`, `LocalBlend`): after each step, x_R ← x_Q + m ⊙ (x_R − x_Q), with m the union of
  the source's and the target's masks of their changed words: their cross-attention maps summed over the steps so
  far, averaged over heads and layers, 3×3 max-pooled, resized (nearest) to the state, divided by the maximum and
  thresholded at `blend_threshold`.
`edit: auto` picks the word swap when Q and R have the same number of words, else refinement.

Conventions (checked against google/prompt-to-prompt's `ptp_utils.py`, `seq_aligner.py` and the
`prompt-to-prompt_stable` notebook's controllers in tests/methods/test_p2p.py):
- windows are fractions of the N-step grid with the official rounding: cross α_i = 1 for
  ⌊lo·(N+1)⌋ ≤ i < ⌊hi·(N+1)⌋ (`get_time_words_attention_alpha` builds N+1 rows), self for ⌊lo·N⌋ ≤ i < ⌊hi·N⌋;
  a single number f means [0, f]. Per-word cross windows (the official dict form) are not offered;
- only the conditional rows are controlled; the unconditional rows of both branches are left as computed (the
  official default, LOW_RESOURCE = False);
- re-weighting acts only inside the cross window, as in the official code (the equaliser multiplies the replaced
  map, which α mixes in), and the re-weighted rows are not renormalised;
- the self-attention size limit is a number of keys (official: 16² = 256, the 16×16 and 8×8 layers of SD at
  512 px); on the tiny and world models every layer is under it;
- local blending uses every down and up cross-attention layer at the map resolution nearest to a quarter of the
  state's side (official: the five 16×16 down/up layers of SD at 512 px, the same set there); its words are the
  changed words (official: words given by hand), and the maps are the ones the branch used (after control, as
  the official store sees them, since it stores the tensor that the replacement then writes into);
- word positions: each space-separated word is tokenised alone and the pieces must concatenate to the prompt's
  tokens (official `get_word_inds` matches decoded token lengths; the same positions for CLIP's tokenizer);
  re-weighted words match whole space-separated words ("background," is not "background"), as officially;
- the replacement mapper aligns source token i with target token j after the last swapped word (official:
  `mapper[j, j]`, the same unless a swapped word's token counts differ, where the official mapper is off by the
  difference); padding positions map to themselves, as officially (also in refinement, where the official
  identity beyond the target's length is kept);
- the DDIM loop is the harness's (`denoise`, ε from `predict_eps_parts`; CFG combined on ε, which equals the
  official combination on the raw output for ε- and v-prediction models), not diffusers' scheduler.step;
- real images start from the harness's DDIM inversion x_T, without null-text inversion (Mokady et al.), so the
  source branch is the DDIM reconstruction.
Request strength s sets how long the attention control lasts, the knob the paper gives for fidelity to the source
against freedom of the edit (the injection steps τ; the official `cross_replace_steps` / `self_replace_steps`): the
steps left uncontrolled at the end of the grid, 1 − hi, are scaled by s. A request controls the windows
[lo, hi(s)] with hi(s) = clip(1 − |s|·(1 − hi), lo, 1), for the configured cross and self windows [lo, hi] alike:
- s = 1: the configured windows exactly (hi(1) = hi, taken as configured, not recomputed in floating point);
- s < 1: longer control, closer to the source image; s = 0 controls every step from lo on (hi(0) = 1), which is
  still an edit (the target branch under full control has the target's words, e.g. the swapped word), so strength 0
  is not "no edit" here;
- s > 1: shorter control; from s ≥ (1 − lo)/(1 − hi) the window collapses to [lo, lo), empty: with lo = 0 for both
  windows that is the target prompt's plain generation from the same x_T. A window ending at hi = 1 is not changed
  by any strength;
- the sign is not used (−s controls as s): shortening control has no reverse direction.
hi(s) is a fraction like the configured one and is rounded to steps by the same official rule below (⌊hi(s)·(N+1)⌋
for the cross window, ⌊hi(s)·N⌋ for self), so strength s is exactly the official code run with
`cross_replace_steps` / `self_replace_steps` = (lo, hi(s)). Re-weighting and local blending are not scaled. Requests
of one batch may have different strengths: the windows are per request (each target row is controlled in its own
window inside the one UNet batch), so a request's result does not depend on its batch-mates.
`info` records the edit kind (`replace` 1 / 0) and the number of changed target tokens.

Options: edit ("auto" | "replace" | "refine", "auto"), cross_replace ([lo, hi] at strength 1, [0, 0.8]), self_replace
([lo, hi] at strength 1, [0, 0.4]), self_replace_max_tokens (256), reweight (1.0), reweight_words (list of words of
R; empty = the changed words), local_blend (false), blend_threshold (0.3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F

from harness.config import SamplerConfig
from harness.diffusion import Schedule, denoise, predict_eps_parts
from harness.diffusion.attention import AttentionLayer, attention_control
from harness.diffusion.backbone import Backbone
from harness.errors import ConfigError
from methods._common import edit_prompts, pairs, start_noise
from methods.base import EditMethod, EditOutput, EditRequest, register_method

EditKind = Literal["auto", "replace", "refine"]


@dataclass(frozen=True)
class P2POptions:
    edit: EditKind = "auto"
    cross_replace: tuple[float, float] = (0.0, 0.8)
    self_replace: tuple[float, float] = (0.0, 0.4)
    self_replace_max_tokens: int = 256
    reweight: float = 1.0
    reweight_words: tuple[str, ...] = ()
    local_blend: bool = False
    blend_threshold: float = 0.3

    def validate(self, prefix: str) -> None:
        for name in ("cross_replace", "self_replace"):
            lo, hi = getattr(self, name)
            if not (0.0 <= lo <= hi <= 1.0):
                raise ConfigError(f"{prefix}.{name}", [lo, hi], "[lo, hi] with 0 <= lo <= hi <= 1 (fractions of steps)")
        if self.self_replace_max_tokens < 0:
            raise ConfigError(f"{prefix}.self_replace_max_tokens", self.self_replace_max_tokens, "an integer >= 0")
        if not (math.isfinite(self.reweight) and self.reweight >= 0):
            raise ConfigError(f"{prefix}.reweight", self.reweight, "a finite number >= 0 (1 = no re-weighting)")
        if not 0.0 <= self.blend_threshold < 1.0:
            raise ConfigError(f"{prefix}.blend_threshold", self.blend_threshold, "a number in [0, 1)")


# -- token bookkeeping: word positions, alignment, mappers ---------------------------------------------

def word_tokens(tokenizer: Any, prompt: str) -> tuple[list[int], list[list[int]]]:
    """(token ids with BOS/EOS, positions of each space-separated word's tokens in them)."""
    ids = list(tokenizer(prompt).input_ids)
    spans, pos, pieces = [], 1, []
    for word in prompt.split(" "):
        word_ids = list(tokenizer(word, add_special_tokens=False).input_ids) if word else []
        spans.append(list(range(pos, pos + len(word_ids))))
        pieces += word_ids
        pos += len(word_ids)
    if pieces != ids[1:-1]:
        raise ValueError(f"prompt {prompt!r}: its words tokenised one by one do not give the prompt's tokens, so "
                         "word positions are ambiguous (Prompt-to-Prompt maps attention word by word)")
    return ids, spans


def align_tokens(source: Sequence[int], target: Sequence[int]) -> list[int]:
    """For each target token, the source token it aligns with, or −1 (a new token): global alignment with gap 0,
    match 1, mismatch −1; where moves tie, a target-only step is preferred, then a source-only step, then a pair
    (the official `seq_aligner.global_align` order, traced back from the end)."""
    n, m = len(source), len(target)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    move = [[0] * (m + 1) for _ in range(n + 1)]  # 1: target-only, 2: source-only, 3: pair
    for j in range(1, m + 1):
        move[0][j] = 1
    for i in range(1, n + 1):
        move[i][0] = 2
        for j in range(1, m + 1):
            options = (score[i][j - 1], score[i - 1][j],
                       score[i - 1][j - 1] + (1 if source[i - 1] == target[j - 1] else -1))
            best = max(options)
            score[i][j] = best
            move[i][j] = 1 + options.index(best)  # first maximum: target-only, source-only, pair
    out = [-1] * m
    i, j = n, m
    while i > 0 or j > 0:
        step = move[i][j]
        if step == 3:
            i, j = i - 1, j - 1
            out[j] = i
        elif step == 1:
            j -= 1
        else:
            i -= 1
    return out


@dataclass
class EditPlan:
    """How one request's target cross-attention is built from the source's (see the module docstring)."""

    kind: str
    mix: torch.Tensor
    """M (L, L): source token w -> target token n."""
    keep: torch.Tensor
    """1 − a (L,): weight of the target's own map per target token."""
    scale: torch.Tensor
    """e (L,): the equaliser per target token."""
    source_changed: torch.Tensor
    """(L,) 1 on the source's changed tokens (local blend)."""
    target_changed: torch.Tensor
    """(L,) 1 on the target's changed tokens (local blend, default re-weighted tokens)."""


def _replace_plan(src_ids: list[int], src_spans: list[list[int]], tgt_ids: list[int], tgt_spans: list[list[int]],
                  length: int) -> tuple[torch.Tensor, list[int], list[int]]:
    mix = torch.zeros(length, length, dtype=torch.float64)
    changed_src, changed_tgt = [], []
    mix[0, 0] = 1.0  # BOS
    for s, t in zip(src_spans, tgt_spans):
        same = [src_ids[p] for p in s] == [tgt_ids[p] for p in t]
        if not same:
            changed_src += s
            changed_tgt += t
        if len(s) == len(t):
            for a, b in zip(s, t):
                mix[a, b] = 1.0
        else:
            for b in t:
                mix[s, b] = 1.0 / len(t)
    # EOS and padding: aligned by position from the end of the words on (official: mapper[j, j], see docstring).
    i, j = len(src_ids) - 1, len(tgt_ids) - 1
    while i < length and j < length:
        mix[i, j] = 1.0
        i, j = i + 1, j + 1
    return mix, [p for p in changed_src if p < length], [p for p in changed_tgt if p < length]


def _refine_plan(src_ids: list[int], tgt_ids: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor, list[int],
                                                                             list[int]]:
    src_ids, tgt_ids = src_ids[:length], tgt_ids[:length]
    aligned = align_tokens(src_ids, tgt_ids)
    # Beyond the target's tokens: position n maps to source position n, as the official mapper does.
    aligned += list(range(len(tgt_ids), length))
    mix = torch.zeros(length, length, dtype=torch.float64)
    keep = torch.zeros(length, dtype=torch.float64)
    for n, w in enumerate(aligned):
        if w < 0:
            keep[n] = 1.0
        else:
            mix[w, n] = 1.0
    used = {w for w in aligned[: len(tgt_ids)] if w >= 0}
    changed_src = [w for w in range(len(src_ids)) if w not in used]
    changed_tgt = [n for n in range(len(tgt_ids)) if aligned[n] < 0]
    return mix, keep, changed_src, changed_tgt


def edit_plan(tokenizer: Any, source: str, target: str, opts: P2POptions, length: int) -> EditPlan:
    """The request's mapper, keep weights, equaliser and changed tokens, over `length` text positions."""
    src_ids, src_spans = word_tokens(tokenizer, source)
    tgt_ids, tgt_spans = word_tokens(tokenizer, target)
    kind = opts.edit
    if kind == "auto":
        kind = "replace" if len(src_spans) == len(tgt_spans) else "refine"
    if kind == "replace":
        if len(src_spans) != len(tgt_spans):
            raise ValueError(f"a word swap needs prompts with the same number of words: {source!r} has "
                             f"{len(src_spans)}, {target!r} has {len(tgt_spans)} (use edit: refine or auto)")
        mix, changed_src, changed_tgt = _replace_plan(src_ids, src_spans, tgt_ids, tgt_spans, length)
        keep = torch.zeros(length, dtype=torch.float64)
    else:
        mix, keep, changed_src, changed_tgt = _refine_plan(src_ids, tgt_ids, length)
    scale = torch.ones(length, dtype=torch.float64)
    if opts.reweight != 1.0:
        if opts.reweight_words:
            words = target.split(" ")
            tokens = [p for k, span in enumerate(tgt_spans) if words[k] in opts.reweight_words for p in span]
        else:
            tokens = changed_tgt
        scale[[p for p in tokens if p < length]] = opts.reweight

    def indicator(positions: list[int]) -> torch.Tensor:
        out = torch.zeros(length, dtype=torch.float64)
        out[positions] = 1.0
        return out

    return EditPlan(kind, mix, keep, scale, indicator(changed_src), indicator(changed_tgt))


def strength_window(window: tuple[float, float], strength: float) -> tuple[float, float]:
    """The window [lo, hi(s)] a request of strength s controls: hi(s) = clip(1 − |s|·(1 − hi), lo, 1) (module
    docstring); strength ±1 returns the configured window itself."""
    if not math.isfinite(strength):
        raise ValueError(f"strength {strength} is not a finite number")
    lo, hi = window
    s = abs(strength)
    if s == 1.0:  # 1 − (1 − hi) need not round back to hi: keep the configured fraction exactly
        return lo, hi
    return lo, min(1.0, max(lo, 1.0 - s * (1.0 - hi)))


def window_steps(window: tuple[float, float], num_steps: int, rows: int) -> list[bool]:
    """Whether each grid step 0..num_steps−1 is inside a window of fractions, rounded as ⌊f·rows⌋ (the official
    cross window has rows = N + 1, the self window rows = N)."""
    lo, hi = int(window[0] * rows), int(window[1] * rows)
    return [lo <= i < hi for i in range(num_steps)]


# -- the attention controller --------------------------------------------------------------------------

class PromptToPromptControl:
    """The attention controller of one batch of P2P edits (one instance per trajectory; `step` set per UNet call).

    The UNet batch is `parts` blocks (uncond, cond; or cond only) of 2B rows: the B source branches, then the B
    target branches. cross_steps[b][i] / self_steps[b][i]: whether request b's target is controlled at grid step i
    (per request: requests of one batch may have different strengths, so different windows).
    `record(layer, is_cross, step, before, after)`, when set, receives each call's probabilities before and after
    control (tests)."""

    def __init__(self, plans: Sequence[EditPlan], parts: int, cross_steps: Sequence[Sequence[bool]],
                 self_steps: Sequence[Sequence[bool]], self_max_tokens: int, blend: bool = False) -> None:
        if len(cross_steps) != len(plans) or len(self_steps) != len(plans):
            raise ValueError(f"{len(plans)} plans need as many cross and self step lists, got {len(cross_steps)} "
                             f"and {len(self_steps)}")
        self.plans, self.parts, self.batch = list(plans), parts, len(plans)
        self.mix = torch.stack([p.mix for p in plans])  # (B, L, L)
        self.keep = torch.stack([p.keep for p in plans])  # (B, L)
        self.scale = torch.stack([p.scale for p in plans])
        self.words = torch.stack([torch.stack([p.source_changed for p in plans]),
                                  torch.stack([p.target_changed for p in plans])])  # (2, B, L)
        self.cross_steps = [list(steps) for steps in cross_steps]
        self.self_steps = [list(steps) for steps in self_steps]
        self.self_max_tokens = self_max_tokens
        self.blend = blend
        self.step = 0
        self.maps: dict[int, torch.Tensor] = {}
        """Local blend: per query count, the word-weighted cross maps summed over steps, layers and heads (2, B, Q);
        divided by `map_counts` (layers x heads) they are the official store's step sums averaged over layers and heads."""
        self.map_counts: dict[int, int] = {}
        self.first_blend_step: dict[int, int] = {}
        self.record: Any = None

    def __call__(self, probs: torch.Tensor, layer: AttentionLayer, is_cross: bool) -> torch.Tensor:
        rows, heads, queries, keys = probs.shape
        if rows != self.parts * 2 * self.batch:
            raise ValueError(f"P2P controller set up for {self.parts}x2x{self.batch} rows, got {rows}")
        view = probs.reshape(self.parts, 2, self.batch, heads, queries, keys)
        src, tgt = view[-1, 0], view[-1, 1]  # conditional rows only: the official default
        new_tgt = None
        rows = [steps[self.step] for steps in (self.cross_steps if is_cross else self.self_steps)]
        if is_cross and any(rows):
            dt = probs.dtype
            mixed = src @ self.mix.to(probs.device, dt)[:, None] + tgt * self.keep.to(probs.device, dt)[:, None, None]
            new_tgt = mixed * self.scale.to(probs.device, dt)[:, None, None]
        elif not is_cross and any(rows) and keys <= self.self_max_tokens:
            new_tgt = src
        if new_tgt is not None and not all(rows):  # requests outside their window keep their own maps
            inside = torch.tensor(rows, device=probs.device)[:, None, None, None]
            new_tgt = torch.where(inside, new_tgt, tgt)
        out = probs
        if new_tgt is not None:
            view = view.clone()
            view[-1, 1] = new_tgt
            out = view.reshape(probs.shape)
        if self.blend and is_cross and layer.place in ("down", "up"):
            used = out.reshape(self.parts, 2, self.batch, heads, queries, keys)[-1]  # (2, B, h, Q, L)
            m = torch.einsum("sbhqk,sbk->sbq", used.double(), self.words.to(probs.device))
            self.maps[queries] = self.maps.get(queries, 0) + m
            if self.step == self.first_blend_step.setdefault(queries, self.step):
                self.map_counts[queries] = self.map_counts.get(queries, 0) + heads  # layers x heads of one step
        if self.record is not None:
            self.record(layer, is_cross, self.step, probs, out)
        return out

    def blend_mask(self, height: int, width: int, threshold: float) -> torch.Tensor:
        """Local-blend mask (B, 1, H, W) from the maps recorded so far (see the module docstring)."""
        side = max(1.0, height / 4)
        queries = min(self.maps, key=lambda q: (abs(math.sqrt(q) - side), -q))
        r = int(round(math.sqrt(queries)))
        maps = (self.maps[queries] / self.map_counts[queries]).reshape(2 * self.batch, 1, r, r)
        maps = F.max_pool2d(maps, 3, stride=1, padding=1)
        maps = F.interpolate(maps, size=(height, width))
        peak = maps.amax(dim=(2, 3), keepdim=True)
        # A branch without changed words has an all-zero map: its mask is empty (official: 0/0 = NaN, also empty).
        masks = torch.where(peak > 0, maps / peak.clamp(min=torch.finfo(maps.dtype).tiny), 0.0) > threshold
        masks = masks.reshape(2, self.batch, 1, height, width)
        return (masks[0] | masks[1]).float()


@register_method("p2p")
class PromptToPrompt(EditMethod):
    families = ("text",)
    Options = P2POptions

    def edit(self, backbone: Backbone, state: dict, requests: Sequence[EditRequest],
             sampler: SamplerConfig) -> list[EditOutput]:
        control = self.control(backbone, requests, sampler)
        source, target = self.run(backbone, requests, sampler, control)
        info = [{"replace": int(p.kind == "replace"), "changed_tokens": int(p.target_changed.sum())}
                for p in control.plans]
        return pairs(backbone.decode(source), backbone.decode(target), info)

    def control(self, backbone: Backbone, requests: Sequence[EditRequest],
                sampler: SamplerConfig) -> PromptToPromptControl:
        """The controller of one batch: its requests' plans and their windows (per strength) on the sampler's grid."""
        opts: P2POptions = self.options
        length = backbone.encode_text([""]).shape[1]
        plans = [edit_plan(backbone.tokenizer, r.item.prompt, t, opts, length)
                 for r, t in zip(requests, edit_prompts(requests))]
        n = sampler.num_steps
        parts = 2 if sampler.guidance_scale != 1.0 else 1
        cross = [window_steps(strength_window(opts.cross_replace, r.strength), n, n + 1) for r in requests]
        self_ = [window_steps(strength_window(opts.self_replace, r.strength), n, n) for r in requests]
        return PromptToPromptControl(plans, parts, cross, self_, opts.self_replace_max_tokens, blend=opts.local_blend)

    def run(self, backbone: Backbone, requests: Sequence[EditRequest], sampler: SamplerConfig,
            control: PromptToPromptControl) -> tuple[torch.Tensor, torch.Tensor]:
        """(source states, target states) x_0, each (B, C, H, W): the two branches of the edit under `control`."""
        b = len(requests)
        cfg = sampler.guidance_scale != 1.0
        schedule = Schedule.from_backbone(backbone, sampler.num_steps)
        x_T, noises = start_noise(backbone, requests, sampler)
        cond = torch.cat([backbone.encode_text([r.item.prompt for r in requests]),
                          backbone.encode_text(edit_prompts(requests))])
        embeddings = [backbone.encode_text([""] * 2 * b), cond] if cfg else [cond]

        def predict(x: torch.Tensor, i: int) -> torch.Tensor:
            control.step = i
            eps = predict_eps_parts(backbone, x, schedule.timesteps[i], embeddings)
            if not cfg:
                return eps[0]
            eps_u, eps_c = eps
            return eps_u + sampler.guidance_scale * (eps_c - eps_u)

        def blend(i: int, x: torch.Tensor) -> torch.Tensor:
            x_src, x_tgt = x.chunk(2)
            mask = control.blend_mask(x.shape[2], x.shape[3], self.options.blend_threshold).to(x.dtype)
            return torch.cat([x_src, x_src + mask * (x_tgt - x_src)])

        both_noises = torch.cat([noises, noises]) if noises is not None else None
        with attention_control(backbone.unet, control):
            out = denoise(backbone, torch.cat([x_T, x_T]), schedule, eta=sampler.eta, noises=both_noises,
                          predict=predict, after_step=blend if self.options.local_blend else None)
        return out[:b], out[b:]
