"""Prompt-to-Prompt's attention control against the official google/prompt-to-prompt conventions, on tiny-sd.

The official controllers are written out here independently, in their own form (`AttentionReplace`'s einsum,
`AttentionRefine`'s gather, `AttentionReweight`'s equaliser, `LocalBlend`'s mask, the N+1-row cross window),
with mappers derived by hand from the token ids, and compared with what the method's controller did to the
recorded attention probabilities; the processor itself is compared with diffusers' own (float64). The strength knob
(the windows' end per request) is checked against its closed form and batch by batch."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from harness.config import SamplerConfig
from harness.diffusion.attention import attention_control, attention_layers, processor_state
from harness.errors import ConfigError
from harness.schema import from_dict
from harness.suites import SuiteItem, load_suite
from methods._common import generate, target_condition
from methods.base import EditRequest
from methods.p2p import P2POptions, PromptToPrompt, align_tokens, edit_plan, strength_window, window_steps

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLER = SamplerConfig(num_steps=6, eta=0.0, guidance_scale=7.5)
PAPER = load_suite("hspace_paper")
SMILE, GENDER = PAPER.item("smile"), PAPER.item("gender")  # refinement (an inserted word), word swap


def _method(**options) -> PromptToPrompt:
    return PromptToPrompt(from_dict(P2POptions, options, prefix="options"))


# -- token bookkeeping: hand-derived expectations of the official seq_aligner -----------------------------

def test_alignment_follows_seq_aligner_conventions() -> None:
    # An inserted token is new (−1); everything else aligns in order.
    assert align_tokens([0, 1, 2, 3, 9], [0, 1, 5, 2, 3, 9]) == [0, 1, -1, 2, 3, 4]
    # Gap 0 against mismatch −1: a substituted token is a deletion plus an insertion, not a pair.
    assert align_tokens([0, 1, 2, 9], [0, 1, 7, 9]) == [0, 1, -1, 3]
    # Ties: tracing back from the end, a target-only step wins, so the *second* of two equal tokens is the new one
    # (a pair-first tie-break would give [0, -1, 1, 2]).
    assert align_tokens([0, 5, 9], [0, 5, 5, 9]) == [0, 1, -1, 2]


def test_refinement_plan_is_the_official_mapper_and_alphas(tiny_sd) -> None:
    # "A photo of a person" -> "A photo of a smiling person": BOS a photo of a [smiling] person EOS.
    length = 77
    plan = edit_plan(tiny_sd.tokenizer, SMILE.prompt, SMILE.target_prompt, P2POptions(), length)
    assert plan.kind == "refine"
    mapper = [0, 1, 2, 3, 4, -1, 5, 6] + list(range(8, length))  # get_mapper: identity beyond the target's tokens
    alphas = torch.tensor([0.0 if m < 0 else 1.0 for m in mapper], dtype=torch.float64)
    expected = torch.zeros(length, length, dtype=torch.float64)
    for n, w in enumerate(mapper):
        if w >= 0:
            expected[w, n] = 1.0
    assert torch.equal(plan.mix, expected) and torch.equal(plan.keep, 1 - alphas)
    assert torch.equal(plan.target_changed.nonzero().flatten(), torch.tensor([5]))
    assert torch.equal(plan.scale, torch.ones(length, dtype=torch.float64))


def test_replacement_plan_is_the_official_mapper(tiny_sd) -> None:
    tok = tiny_sd.tokenizer
    # One token for one token: the official mapper is the identity, and the changed tokens are the swapped word's.
    plan = edit_plan(tok, GENDER.prompt, GENDER.target_prompt, P2POptions(), 77)
    assert plan.kind == "replace" and torch.equal(plan.mix, torch.eye(77, dtype=torch.float64))
    assert plan.keep.abs().sum() == 0 and plan.target_changed.nonzero().flatten().tolist() == [5]
    # One token for two ("lasagne" is 2 CLIP tokens): the source token spreads 1/2 onto each (get_replacement_mapper_),
    # then EOS and padding follow with the offset of one.
    assert len(tok("lasagne", add_special_tokens=False).input_ids) == 2
    plan = edit_plan(tok, "a cat on a table", "a lasagne on a table", P2POptions(), 77)
    expected = torch.zeros(77, 77, dtype=torch.float64)
    for i, j in ((0, 0), (1, 1), (3, 4), (4, 5), (5, 6)):  # BOS a | on a table
        expected[i, j] = 1.0
    expected[2, 2] = expected[2, 3] = 0.5  # cat -> lasa gne
    for i in range(6, 76):  # EOS and padding, source position i onto target i + 1
        expected[i, i + 1] = 1.0
    assert torch.equal(plan.mix, expected)
    with pytest.raises(ValueError, match="same number of words"):
        edit_plan(tok, SMILE.prompt, SMILE.target_prompt, P2POptions(edit="replace"), 77)


def test_reweighting_scales_the_chosen_words_of_the_target(tiny_sd) -> None:
    plan = edit_plan(tiny_sd.tokenizer, SMILE.prompt, SMILE.target_prompt, P2POptions(reweight=3.0), 77)
    assert plan.scale[5] == 3.0 and (plan.scale.sum() - 3.0) == 76  # the changed word, "smiling"
    plan = edit_plan(tiny_sd.tokenizer, SMILE.prompt, SMILE.target_prompt,
                     P2POptions(reweight=0.5, reweight_words=("photo", "person")), 77)
    assert plan.scale.tolist()[:8] == [1, 1, 0.5, 1, 1, 1, 0.5, 1]


def test_windows_round_as_the_official_code() -> None:
    # Cross: alpha has N + 1 rows, [int(lo (N+1)), int(hi (N+1))); self: [int(lo N), int(hi N)).
    assert window_steps((0.0, 0.8), 10, 11) == [True] * 8 + [False] * 2   # int(8.8) = 8
    assert window_steps((0.0, 0.4), 10, 10) == [True] * 4 + [False] * 6
    assert window_steps((0.25, 0.75), 6, 7) == [False, True, True, True, True, False]  # int(1.75), int(5.25)
    assert window_steps((0.0, 0.0), 6, 7) == [False] * 6


# -- the processor and the backbone ----------------------------------------------------------------------

def test_processor_without_control_is_diffusers_attention(sd64) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, *sd64.state_shape()), generator=g, dtype=torch.float64)
    emb = sd64.encode_text(["a photo of a cat", ""])
    plain = sd64.unet(x, 500, encoder_hidden_states=emb).sample
    seen = []

    def identity(probs, layer, is_cross):
        seen.append((layer.place, is_cross, probs.shape))
        assert torch.allclose(probs.sum(-1), torch.ones((), dtype=probs.dtype))  # rows are distributions
        return probs

    with attention_control(sd64.unet, identity):
        controlled = sd64.unet(x, 500, encoder_hidden_states=emb).sample
    assert len(seen) == len(attention_layers(sd64.unet)) and {p for p, _, _ in seen} == {"down", "mid", "up"}
    assert {c for _, c, _ in seen} == {True, False}
    torch.testing.assert_close(controlled, plain, rtol=0, atol=1e-10)
    # A control that changes the maps changes the output (so the comparison above can fail).
    with attention_control(sd64.unet, lambda p, layer, c: torch.softmax(p * 3, -1) if c else p):
        other = sd64.unet(x, 500, encoder_hidden_states=emb).sample
    assert (other - plain).abs().max() > 1e-4


def test_processors_are_restored_even_on_exceptions(tiny_sd, monkeypatch) -> None:
    before = processor_state(tiny_sd.unet)
    objects = dict(tiny_sd.unet.attn_processors)

    def boom(probs, layer, is_cross):
        raise RuntimeError("controller failed")

    with pytest.raises(RuntimeError, match="controller failed"):
        with attention_control(tiny_sd.unet, boom):
            assert processor_state(tiny_sd.unet) != before  # installed inside
            tiny_sd.unet(torch.zeros(1, *tiny_sd.state_shape()), 10, encoder_hidden_states=tiny_sd.encode_text([""]))
    assert processor_state(tiny_sd.unet) == before
    assert all(tiny_sd.unet.attn_processors[k] is v for k, v in objects.items())
    # Through the method: a failing step leaves the processors as found too.
    from methods import p2p

    calls = {"n": 0}
    original_call = p2p.PromptToPromptControl.__call__

    def fail_later(self, probs, layer, is_cross):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("step failed")
        return original_call(self, probs, layer, is_cross)

    monkeypatch.setattr(p2p.PromptToPromptControl, "__call__", fail_later)
    with pytest.raises(RuntimeError, match="step failed"):
        _method().edit(tiny_sd, {}, [EditRequest("a", SMILE, 1.0, 3)], SAMPLER)
    assert processor_state(tiny_sd.unet) == before


# -- the attention-control math ----------------------------------------------------------------------------

def _official_cross(base: torch.Tensor, replace: torch.Tensor, plan_kind: str, mapper, alphas, equalizer):
    """The official replace_cross_attention on one edit (base, replace: (heads, Q, L))."""
    if plan_kind == "replace":
        out = torch.einsum("hpw,bwn->bhpn", base, mapper[None])[0]  # AttentionReplace
    else:
        out = base[:, :, mapper] * alphas + replace * (1 - alphas)  # AttentionRefine (mapper −1 -> alpha 0)
    return out * equalizer  # AttentionReweight with the refine/replace controller as prev_controller


@pytest.mark.parametrize("item, options", [
    (SMILE, {"reweight": 2.0}),
    (GENDER, {"cross_replace": [0.2, 0.9], "self_replace": [0.0, 0.5]}),
])
def test_controlled_maps_are_the_official_mapped_source_maps(tiny_sd, item: SuiteItem, options: dict) -> None:
    method = _method(**options)
    request = EditRequest("a", item, 1.0, 3)
    control = method.control(tiny_sd, [request], SAMPLER)
    plan = control.plans[0]
    n = SAMPLER.num_steps
    opts = method.options
    # Hand-built official tensors for this item (see the plan tests above for their derivation).
    length = 77
    if plan.kind == "refine":
        mapper = torch.tensor([0, 1, 2, 3, 4, -1, 5, 6] + list(range(8, length)))
        alphas = (mapper >= 0).to(torch.float32)
    else:
        mapper, alphas = torch.eye(length), None
    equalizer = torch.ones(length)
    if opts.reweight != 1.0:
        equalizer[5] = opts.reweight
    cross_lo, cross_hi = (int(f * (n + 1)) for f in opts.cross_replace)
    self_lo, self_hi = (int(f * n) for f in opts.self_replace)
    records = []
    control.record = lambda layer, is_cross, step, before, after: records.append(
        (layer, is_cross, step, before.detach().clone(), after.detach().clone()))
    method.run(tiny_sd, [request], SAMPLER, control)
    assert len(records) == n * len(attention_layers(tiny_sd.unet))
    changed_cross, changed_self = set(), set()
    distinct_cross = distinct_self = 0  # controlled calls where the uncontrolled map differs: the checks can fail
    for layer, is_cross, step, before, after in records:
        # Rows: [uncond source, uncond target, source, target] (batch of one request, heads second).
        assert torch.equal(after[:3], before[:3]), "only the conditional target row may change"
        src, tgt, new = before[2], before[3], after[3]
        if is_cross and cross_lo <= step < cross_hi:
            expected = _official_cross(src, tgt, plan.kind, mapper.to(src.dtype) if alphas is None else mapper,
                                       None if alphas is None else alphas.to(src.dtype), equalizer.to(src.dtype))
            torch.testing.assert_close(new, expected, rtol=0, atol=1e-6)
            distinct_cross += not torch.allclose(tgt, expected, atol=1e-4)
            changed_cross.add(step)
        elif not is_cross and self_lo <= step < self_hi and before.shape[-1] <= opts.self_replace_max_tokens:
            assert torch.equal(new, src)
            distinct_self += not torch.allclose(tgt, src, atol=1e-4)
            changed_self.add(step)
        else:
            assert torch.equal(new, tgt), f"{layer.name} step {step} changed outside its window"
    assert changed_cross == set(range(cross_lo, min(cross_hi, n))) and changed_self == set(range(self_lo, self_hi))
    assert distinct_cross > 0 and distinct_self > 0


def test_zero_windows_give_plain_target_generation(sd64) -> None:
    requests = [EditRequest("a", SMILE, 1.0, 3), EditRequest("b", GENDER, 1.0, 4)]
    plain = generate(sd64, requests, SAMPLER, cond=target_condition(sd64, requests, SAMPLER))
    originals = generate(sd64, requests, SAMPLER)
    off = _method(cross_replace=[0.0, 0.0], self_replace=[0.0, 0.0], reweight=4.0).edit(sd64, {}, requests, SAMPLER)
    on = _method().edit(sd64, {}, requests, SAMPLER)
    # The DDIM state is float32 whatever the model's dtype (harness.diffusion.sampler), and the two paths combine CFG
    # in a different order (on ε here, on the raw output in predict_eps): a few float32 ulps of the images.
    atol = 1e-6
    for k in range(len(requests)):
        torch.testing.assert_close(off[k].edited, plain[k], rtol=0, atol=atol)
        torch.testing.assert_close(off[k].original, originals[k], rtol=0, atol=atol)
        torch.testing.assert_close(on[k].original, originals[k], rtol=0, atol=atol)
        assert (on[k].edited - plain[k]).abs().max() > 1e-3  # the default windows do edit: the check can fail


def test_full_windows_with_identical_prompts_reproduce_the_source(sd64) -> None:
    """With R = Q the mapper is the identity: full windows must leave the target branch the source's, and the
    source branch the plain generation."""
    same = SuiteItem(id="same", attribute="smile", prompt=SMILE.prompt, target_prompt=SMILE.prompt)
    request = EditRequest("a", same, 1.0, 3)
    out = _method(cross_replace=[0.0, 1.0], self_replace=[0.0, 1.0]).edit(sd64, {}, [request], SAMPLER)[0]
    torch.testing.assert_close(out.edited, out.original, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.original, generate(sd64, [request], SAMPLER)[0], rtol=0, atol=1e-6)


def test_local_blend_is_the_official_mask(tiny_sd) -> None:
    # tiny-sd's random maps are flat: at the official 0.3 every pixel is in; 0.8 leaves a non-trivial mask.
    method = _method(local_blend=True, blend_threshold=0.8)
    request = EditRequest("a", GENDER, 1.0, 3)
    control = method.control(tiny_sd, [request], SAMPLER)
    maps_per_step: dict[int, list[torch.Tensor]] = {}
    side = tiny_sd.state_shape()[-1]

    def keep(layer, is_cross, step, before, after):
        if is_cross and layer.place in ("down", "up"):
            maps_per_step.setdefault(step, []).append(after[2:].double())  # cond rows (source, target)

    control.record = keep
    states = []
    original_mask = control.blend_mask

    def spy(h, w, threshold):
        states.append(original_mask(h, w, threshold))
        return states[-1]

    control.blend_mask = spy
    source, target = method.run(tiny_sd, [request], SAMPLER, control)
    # Official LocalBlend at the last step: the store sums maps over steps; maps of the chosen resolution (a quarter
    # of the state's side, here the nearest recorded), word-weighted (alpha_layers), mean over layers and heads.
    all_maps = [m for step in sorted(maps_per_step) for m in maps_per_step[step]]
    resolutions = sorted({m.shape[2] for m in all_maps})
    q = min(resolutions, key=lambda r: (abs(r**0.5 - side / 4), -r))
    r = int(round(q**0.5))
    alpha_layers = torch.stack([control.plans[0].source_changed, control.plans[0].target_changed])  # (2, L)
    chosen = [m for m in all_maps if m.shape[2] == q]
    per_layer = [(m * alpha_layers[:, None, None, :]).sum(-1) for m in chosen]  # (2, heads, Q) each
    steps = len(maps_per_step)
    maps = torch.cat(per_layer, dim=1).mean(1) * steps  # mean over layers x heads of the step-summed maps
    maps = maps.reshape(2, 1, r, r)
    mask = F.max_pool2d(maps, (3, 3), (1, 1), padding=(1, 1))
    mask = F.interpolate(mask, size=(side, side))
    mask = mask / mask.max(2, keepdim=True)[0].max(3, keepdim=True)[0]
    mask = mask.gt(0.8)
    mask = (mask[:1] + mask[1:]).float()
    assert torch.equal(states[-1], mask)
    assert 0 < float(mask.mean()) < 1, "a trivial mask cannot tell conventions apart"
    outside = (mask == 0).expand_as(target)
    assert torch.equal(target[outside], source[outside])  # x_t = x_t[:1] + mask * (x_t - x_t[:1])
    assert not torch.allclose(target[~outside], source[~outside], atol=1e-4)


# -- the strength knob: windows [lo, hi(s)], hi(s) = clip(1 − |s|(1 − hi), lo, 1) ------------------------------------

def _hi(window: tuple[float, float], s: float) -> float:
    """The closed form, written out independently of the method."""
    lo, hi = window
    return hi if abs(s) == 1 else min(1.0, max(lo, 1 - abs(s) * (1 - hi)))


def test_strength_sets_each_requests_windows(tiny_sd) -> None:
    """Per request, on the 6-step grid (cross rounds with 7 rows, self with 6), defaults [0, 0.8] and [0, 0.4]."""
    strengths = [1.0, 0.5, 2.0, 0.0, 5.0, -2.0]
    requests = [EditRequest(str(k), SMILE, s, 3) for k, s in enumerate(strengths)]
    control = _method().control(tiny_sd, requests, SAMPLER)
    on = lambda k: [True] * k + [False] * (6 - k)  # noqa: E731
    # cross: int(0.8 * 7) = 5; hi 0.9: int(6.3) = 6; hi 0.6: int(4.2) = 4; hi 1: all; 1 − 5 x 0.2 = 0: none.
    assert control.cross_steps == [on(5), on(6), on(4), on(6), on(0), on(4)]
    # self: int(0.4 * 6) = 2; hi 0.7: int(4.2) = 4; 1 − 2 x 0.6 < 0: clipped to lo = 0, none; hi 1: all.
    assert control.self_steps == [on(2), on(4), on(0), on(6), on(0), on(0)]
    # Clipping at lo > 0, and the configured fraction kept exactly at strength 1.
    assert strength_window((0.25, 0.5), 3.0) == (0.25, 0.25) and strength_window((0.1, 0.3), 1.0) == (0.1, 0.3)
    assert strength_window((0.1, 0.3), -1.0) == (0.1, 0.3) and strength_window((0.1, 0.3), 0.0) == (0.1, 1.0)


def test_strength_is_the_end_of_the_windows(tiny_sd) -> None:
    """Strength s with windows [lo, hi] is strength 1 with windows [lo, hi(s)] (the closed form): the same images, byte
    for byte, in a batch with a word swap and a refinement."""
    cross, self_ = (0.2, 0.7), (0.1, 0.5)
    items = [(SMILE, 3), (GENDER, 4)]
    configured = _method(cross_replace=cross, self_replace=self_).edit(
        tiny_sd, {}, [EditRequest("a", item, 1.0, seed) for item, seed in items], SAMPLER)
    changed = 0
    for s in (0.0, 0.5, 2.0, -0.5):
        scaled = _method(cross_replace=cross, self_replace=self_).edit(
            tiny_sd, {}, [EditRequest("a", item, s, seed) for item, seed in items], SAMPLER)
        windows = {"cross_replace": [cross[0], _hi(cross, s)], "self_replace": [self_[0], _hi(self_, s)]}
        expected = _method(**windows).edit(tiny_sd, {}, [EditRequest("a", item, 1.0, seed) for item, seed in items],
                                           SAMPLER)
        for got, want, base in zip(scaled, expected, configured):
            assert torch.equal(got.edited, want.edited) and torch.equal(got.original, want.original), s
            assert torch.equal(got.original, base.original)
            assert not torch.equal(got.edited, got.original), s  # every strength edits, 0 included
            changed += not torch.allclose(got.edited, base.edited, atol=1e-4)
    assert changed == 8, "every strength here changes some window, so the image: the comparison above can fail"


def test_mixed_strengths_batch_equals_per_request_runs(sd64) -> None:
    """Requests of different strengths in one UNet batch: each gets the image it gets alone (float64 model: the batch
    changes float32 rounding only, far under 1e-6), with local blending on."""
    batch = [EditRequest("a", SMILE, 0.5, 3), EditRequest("b", GENDER, 2.0, 4), EditRequest("c", SMILE, 1.0, 5),
             EditRequest("d", GENDER, 0.0, 6)]
    method = _method(local_blend=True, reweight=2.0)
    together = method.edit(sd64, {}, batch, SAMPLER)
    for request, out in zip(batch, together):
        (alone,) = method.edit(sd64, {}, [request], SAMPLER)
        torch.testing.assert_close(out.edited, alone.edited, rtol=0, atol=1e-6)
        torch.testing.assert_close(out.original, alone.original, rtol=0, atol=1e-6)
    # Another strength's image is far outside that tolerance: the comparison can fail.
    for k in (0, 1, 3):
        (other,) = method.edit(sd64, {}, [replace(batch[k], strength=1.0)], SAMPLER)
        assert not torch.allclose(together[k].edited, other.edited, atol=1e-4), k


@pytest.mark.parametrize("options", [
    {"cross_replace": [0.5, 0.2]}, {"self_replace": [0.0, 1.5]}, {"reweight": float("nan")}, {"reweight": -1.0},
    {"blend_threshold": 1.0}, {"edit": "swap"}, {"self_replace_max_tokens": -1},
])
def test_bad_options_are_refused(options) -> None:
    with pytest.raises(ConfigError):
        from_dict(P2POptions, options, prefix="options")
