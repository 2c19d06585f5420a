"""Park et al. pullback baseline: basis against an explicit ∂h/∂x, guidance closed form, choice, harness run.

The explicit-Jacobian check runs on a micro UNet2DModel (x = 3x16x16, h = 8x4x4; tests/methods/conftest.py);
the same check on tiny-unet (x 3x32x32, h 32x8x8) is marked slow.
"""
from __future__ import annotations

import json

import pytest
import torch

from harness.config import SamplerConfig
from harness.diffusion import MidBlockHook, Schedule, predict_eps
from harness.diffusion.autodiff import ad_safe_attention, batched_jvp, batched_vjp
from harness.diffusion.backbone import Backbone
from harness.diffusion.sampler import Condition
from harness.errors import ConfigError
from harness.schema import from_dict
from harness.suites import SuiteItem, load_suite
from methods._scorers import ScorerSpec, make_scorer
from methods._subspace import StopCriterion
from methods.base import EditRequest
from methods.park_pullback import (
    ParkOptions, ParkPullback, encoder_h, pullback_basis, x_space_guidance,
)
from tests.methods.conftest import run_through_harness, to_uint8


pytestmark = pytest.mark.usefixtures("one_thread")


def explicit_pullback(backbone: Backbone, x: torch.Tensor, t: int, emb: torch.Tensor | None = None) -> torch.Tensor:
    """∂h/∂x by torch.autograd.functional.jacobian through a full forward pass with h read by MidBlockHook."""

    def h_of_x(x_flat: torch.Tensor) -> torch.Tensor:
        with MidBlockHook(backbone.unet) as hook:
            if emb is None:
                backbone.unet(x_flat.view(1, *x.shape[1:]), t)
            else:
                backbone.unet(x_flat.view(1, *x.shape[1:]), t, encoder_hidden_states=emb)
            return hook.raw.reshape(-1)

    return torch.autograd.functional.jacobian(h_of_x, x.to(backbone.dtype).reshape(-1), vectorize=True)


def cheap(**kw) -> ParkOptions:
    base = dict(n_guidance=2, convergence=StopCriterion(kind="vectors", max_iters=2, min_iters=0),
                scorer=ScorerSpec(kind="channel-mean"))
    return ParkOptions(**{**base, **kw})


# ----------------------------------------------------------------------------------------------
# Math

def test_basis_matches_explicit_pullback_jacobian(micro: Backbone) -> None:
    x = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    J = explicit_pullback(micro, x, 701)
    assert J.shape == (8 * 4 * 4, 3 * 16 * 16)
    U, S, Vh = torch.linalg.svd(J, full_matrices=False)
    res = pullback_basis(micro, x, 701, None, 2, stop=StopCriterion(tol=0.0, max_iters=80),
                         generator=torch.Generator().manual_seed(1), compute_u=True)
    assert res.V.shape == (2, 3, 16, 16) and res.U.shape == (2, 8, 4, 4)
    assert torch.allclose(res.S, S[:2], rtol=1e-4, atol=0)
    V = res.V.reshape(2, -1)
    signs = torch.sign((V * Vh[:2]).sum(1))
    assert (V - signs[:, None] * Vh[:2]).abs().max() < 1e-4
    assert (res.U.reshape(2, -1) - signs[:, None] * U[:, :2].T).abs().max() < 1e-4
    # The official stopping rule (max |ΔV| <= 1e-4 after > 10 iterations) stops early and lands close.
    early = pullback_basis(micro, x, 701, None, 2, generator=torch.Generator().manual_seed(1))
    assert early.converged and 10 < early.iterations < 50
    assert (early.V.reshape(2, -1) - signs[:, None] * Vh[:2]).abs().max() < 1e-2


def test_encoder_half_equals_full_forward_h(tiny_sd: Backbone) -> None:
    """f(x) stops at the mid block, conditioned on the edit prompt only (no CFG), as the official get_h."""
    x = torch.randn((2, *tiny_sd.state_shape()), generator=torch.Generator().manual_seed(0))
    emb = tiny_sd.encode_text(["a photo of a man"])
    with MidBlockHook(tiny_sd.unet) as hook, torch.no_grad():
        predict_eps(tiny_sd, x, 701, Condition(emb.expand(2, -1, -1), emb.expand(2, -1, -1), 1.0))
        h_full = hook.raw.clone()
    with torch.no_grad():
        h = encoder_h(tiny_sd, 701, emb)(x)
    assert h.shape == (2, 64, 8, 8) and torch.equal(h, h_full)
    # Its JVP/VJP (early-stopped, batched) equal autograd's through the full forward pass.
    f = encoder_h(tiny_sd, 701, emb)
    x0 = x[:1]
    g = torch.Generator().manual_seed(1)
    vs = torch.randn((2, *tiny_sd.state_shape()), generator=g)
    us = torch.randn((2, 64, 8, 8), generator=g)

    def h_full(x_: torch.Tensor) -> torch.Tensor:
        with MidBlockHook(tiny_sd.unet) as hook:
            tiny_sd.unet(x_, 701, encoder_hidden_states=emb)
            return hook.raw

    for i in range(2):
        with ad_safe_attention():  # the double-backward JVP has no fused-attention derivative
            jv = torch.autograd.functional.jvp(h_full, x0, vs[i:i + 1])[1]
            jtu = torch.autograd.functional.vjp(h_full, x0, us[i:i + 1])[1]
        assert torch.allclose(batched_jvp(f, x0, vs)[i:i + 1], jv, rtol=1e-4, atol=1e-4 * jv.abs().max().item())
        assert torch.allclose(batched_vjp(f, x0, us)[i:i + 1], jtu, rtol=1e-4, atol=1e-4 * jtu.abs().max().item())


def test_x_space_guidance_closed_form(micro: Backbone) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn((2, 3, 16, 16), generator=g)
    v = torch.randn((2, 3, 16, 16), generator=g)
    lam = torch.tensor([0.5, -1.0])
    out = x_space_guidance(micro, x, v, 501, None, 0.7, lam, 1)
    with torch.no_grad():
        expected = x + lam.view(-1, 1, 1, 1) * (predict_eps(micro, x + 0.7 * v, 501, None) - predict_eps(micro, x, 501, None))
    assert torch.allclose(out, expected, atol=1e-6)
    two = x_space_guidance(micro, x, v, 501, None, 0.7, lam, 2)
    assert torch.allclose(two, x_space_guidance(micro, out, v, 501, None, 0.7, lam, 1), atol=1e-6)
    assert torch.equal(x_space_guidance(micro, x, v, 501, None, 0.7, torch.zeros(2), 3), x)


def test_edit_step_is_the_nearest_grid_step(tiny_sd: Backbone) -> None:
    schedule = Schedule.from_backbone(tiny_sd, 50)
    assert schedule.timesteps[:2] == (981, 961)
    assert schedule.step_index(0.7) == 14 and schedule.timesteps[14] == 701  # methods-spec §0
    assert Schedule.from_backbone(tiny_sd, 4).step_index(0.7) == 0  # grid 751, 501, 251, 1
    with pytest.raises(ConfigError, match="component"):
        from_dict(ParkOptions, {"pca_rank": 2, "component": 2})
    with pytest.raises(ConfigError, match="t_edit"):
        from_dict(ParkOptions, {"t_edit": 1.5})


# ----------------------------------------------------------------------------------------------
# The method

def test_strength_zero_determinism_and_per_request_choice(tiny_sd: Backbone) -> None:
    item = load_suite("svd_paper").item("person-old")
    sampler = SamplerConfig(num_steps=4, guidance_scale=7.5)
    requests = [EditRequest("a", item, 0.0, 21), EditRequest("b", item, 1.0, 21), EditRequest("c", item, 1.0, 22)]
    method = ParkPullback(cheap(t_edit=0.5, selection="per-request"))
    first = method.edit(tiny_sd, {}, requests, sampler)
    second = method.edit(tiny_sd, {}, requests, sampler)
    for a, b in zip(first, second):
        assert torch.equal(a.edited, b.edited) and torch.equal(a.original, b.original) and a.info == b.info
    assert torch.equal(to_uint8(first[0].edited), to_uint8(first[0].original))
    assert torch.equal(first[0].original, first[1].original)
    for out in first[1:]:
        assert not torch.equal(to_uint8(out.edited), to_uint8(out.original))
        assert out.info["component"] in (0, 1) and out.info["sign"] in (1, -1) and out.info["edit_step"] == 1
    # The choice is the best of the four candidates under the scorer (channel-mean: mean red).
    scorer = make_scorer(ScorerSpec(kind="channel-mean"))
    fixed = {}
    for c in (0, 1):
        for sign in ("positive", "negative"):
            out = ParkPullback(cheap(t_edit=0.5, component=c, sign=sign)).edit(tiny_sd, {}, requests[1:2], sampler)[0]
            fixed[(c, 1 if sign == "positive" else -1)] = out
    scores = {key: float(scorer(out.edited[None], "")) for key, out in fixed.items()}
    best = max(scores, key=scores.get)
    assert (first[1].info["component"], first[1].info["sign"]) == best
    assert first[1].info["score"] == pytest.approx(scores[best], abs=1e-5)
    assert torch.allclose(first[1].edited, fixed[best].edited, atol=1e-4)
    assert "score" not in fixed[best].info


def test_select_strength_fixes_the_choice_across_a_sweep(tiny_sd: Backbone) -> None:
    item = load_suite("svd_paper").item("person-male")
    sampler = SamplerConfig(num_steps=4, guidance_scale=7.5)
    requests = [EditRequest("a", item, 0.5, 4), EditRequest("b", item, 1.0, 4), EditRequest("c", item, 0.0, 4)]
    out = ParkPullback(cheap(select_strength=1.0, selection="per-request")).edit(tiny_sd, {}, requests, sampler)
    choices = {(o.info["component"], o.info["sign"]) for o in out}
    assert len(choices) == 1
    assert torch.equal(to_uint8(out[2].edited), to_uint8(out[2].original))
    alone = ParkPullback(cheap(selection="per-request")).edit(tiny_sd, {}, requests[1:2], sampler)[0]
    assert (alone.info["component"], alone.info["sign"]) in choices


def test_plain_variant_and_unconditional_model(micro: Backbone) -> None:
    item = SuiteItem(id="x", attribute="a")
    sampler = SamplerConfig(num_steps=3, eta=1.0)
    requests = [EditRequest("a", item, 0.0, 1), EditRequest("b", item, 30.0, 1)]
    out = ParkPullback(cheap(guidance="plain", component=1, sign="negative")).edit(micro, {}, requests, sampler)
    assert torch.equal(to_uint8(out[0].edited), to_uint8(out[0].original))
    assert not torch.equal(to_uint8(out[1].edited), to_uint8(out[1].original))
    assert out[1].info["component"] == 1 and out[1].info["sign"] == -1 and "score" not in out[1].info
    out = ParkPullback(cheap(lam=0.1, selection="per-request")).edit(micro, {}, requests, sampler)
    assert torch.equal(to_uint8(out[0].edited), to_uint8(out[0].original))
    assert "score" in out[1].info


def test_end_to_end_through_the_harness(tmp_path) -> None:
    _, rows = run_through_harness(
        tmp_path, 4, run_id="park", models=["tiny-sd", "tiny-unet"], suites=["svd_paper"], items=["person-old"],
        seeds=[0], strengths=[0.0, 1.0], sampler={"num_steps": 4, "eta": 0.0, "guidance_scale": 7.5},
        methods=[{"name": "park", "options": {
            "n_guidance": 2, "convergence": {"kind": "vectors", "max_iters": 2, "min_iters": 0},
            "scorer": {"kind": "channel-mean"}, "calibration": {"n_samples": 2}}}])
    for info in rows["info"].map(json.loads):
        assert info["calibrated"] is True and info["component"] in (0, 1) and info["sign"] in (1, -1)
        assert info["calibration_samples"] == 2 and len(info["calibration_gains"]) == 2


@pytest.mark.slow
def test_tiny_unet_basis_matches_explicit_pullback() -> None:
    from harness.models import load_backbone

    backbone = load_backbone("tiny-unet")
    backbone.unet.double()
    x = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with MidBlockHook(backbone.unet) as hook:
        J = torch.func.jacrev(lambda x_: (backbone.unet(x_.view(1, 3, 32, 32), 701), hook.raw.reshape(-1))[1],
                              chunk_size=256)(x.reshape(-1))
    assert J.shape == (2048, 3072)
    _, S, Vh = torch.linalg.svd(J, full_matrices=False)
    res = pullback_basis(backbone, x, 701, None, 2, stop=StopCriterion(tol=0.0, max_iters=150),
                         generator=torch.Generator().manual_seed(1))
    assert torch.allclose(res.S, S[:2], rtol=1e-4, atol=0)
    V = res.V.reshape(2, -1)
    signs = torch.sign((V * Vh[:2]).sum(1))
    assert (V - signs[:, None] * Vh[:2]).abs().max() < 1e-4


def test_continuation_default_is_the_official_empty_prompt_without_cfg(tiny_sd: Backbone) -> None:
    """Plain edit x' = x_e + s·v_0, continued with the empty prompt at guidance 1 (Park et al.'s for_prompt = ""
    and guidance_scale = 0, i.e. no CFG), equals an explicit unconditional DDIM continuation from x'; the
    'original' option continues with the original prompt at the run's CFG."""
    from harness.diffusion import denoise, initial_noise, make_condition
    from harness.hashing import stable_seed
    from tests.methods.continuation import explicit_continuation

    item = load_suite("svd_paper").item("person-old")
    sampler = SamplerConfig(num_steps=4, guidance_scale=7.5)
    req = [EditRequest("a", item, 3.0, 21)]
    opts = dict(guidance="plain", component=0, sign="positive", t_edit=0.5)
    edited = ParkPullback(cheap(**opts)).edit(tiny_sd, {}, req, sampler)[0]
    # the edited latent, explicitly
    schedule = Schedule.from_backbone(tiny_sd, 4)
    i_edit = schedule.step_index(0.5)
    x_T, _ = initial_noise([21], tiny_sd.state_shape(), 4, 0.0)
    x_e = denoise(tiny_sd, x_T, schedule, make_condition(tiny_sd, [item.prompt], 7.5), stop=i_edit)
    basis = pullback_basis(tiny_sd, x_e, schedule.timesteps[i_edit], tiny_sd.encode_text([item.target_prompt]), 2,
                           stop=cheap().convergence, generator=torch.Generator().manual_seed(stable_seed("park-init", 21)))
    x_new = x_e + 3.0 * basis.V[0][None].to(x_e.dtype)
    expect = explicit_continuation(tiny_sd, x_new, i_edit, 4, "", 1.0)
    torch.testing.assert_close(edited.edited, expect[0], atol=2e-5, rtol=0)
    prompted = ParkPullback(cheap(**opts, continue_prompt="original", continue_guidance=None)).edit(tiny_sd, {}, req,
                                                                                                    sampler)[0]
    torch.testing.assert_close(prompted.edited, explicit_continuation(tiny_sd, x_new, i_edit, 4, item.prompt, 7.5)[0],
                               atol=2e-5, rtol=0)
    assert torch.equal(prompted.original, edited.original)
    with pytest.raises(ConfigError, match="continue_guidance"):
        from_dict(ParkOptions, {"continue_guidance": -1.0}, prefix="o")
