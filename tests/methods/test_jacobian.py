"""Jacobian subspace iteration in h-space (Haas et al. Sec. IV-B): math against explicit Jacobians, edits, harness run.

The explicit-Jacobian checks run on a micro UNet2DModel (h = 8x4x4, ε = 3x16x16; tests/methods/conftest.py): the same
diffusers class and code path as tiny-unet, but its explicit Jacobian takes a second instead of minutes
on a 2-core machine. The same check on tiny-unet itself is marked slow.
"""
from __future__ import annotations

import json

import pytest
import torch

from harness.config import SamplerConfig
from harness.diffusion import MidBlockHook, Schedule, Trace, denoise, initial_noise, make_condition, predict_eps
from harness.diffusion.autodiff import batched_jvp
from harness.diffusion.backbone import Backbone
from harness.diffusion.sampler import Condition
from harness.errors import ConfigError
from harness.schema import from_dict
from harness.suites import Suite, SuiteItem, load_suite
from methods._subspace import StopCriterion
from methods.base import EditRequest, PrepareContext
from methods.jacobian import (
    JacobianOptions, JacobianSubspace, eps_of_h_shift, jacobian_svd, region_mask,
)
from tests.methods.conftest import run_through_harness, to_uint8


pytestmark = pytest.mark.usefixtures("one_thread")


def trajectory_state(backbone: Backbone, step: int, num_steps: int = 4, eta: float = 1.0) -> tuple[torch.Tensor, int]:
    """x_t before grid step `step` of seed 0's trajectory, and t."""
    schedule = Schedule.from_backbone(backbone, num_steps)
    x_T, noises = initial_noise([0], backbone.state_shape(), num_steps, eta)
    trace = Trace(record_h=False)
    denoise(backbone, x_T, schedule, None, eta=eta, noises=noises, trace=trace)
    return trace.xs[step], schedule.timesteps[step]


def explicit_jacobian(backbone: Backbone, x: torch.Tensor, t: int, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple]:
    """∂ε/∂h by torch.autograd.functional.jacobian, with h substituted through MidBlockHook.replace."""
    with MidBlockHook(backbone.unet) as hook, torch.no_grad():
        backbone.unet(x.to(backbone.dtype), t)
        h0 = hook.raw.clone()
    x_in = x.to(backbone.dtype)

    def f(h_flat: torch.Tensor) -> torch.Tensor:
        with MidBlockHook(backbone.unet) as hook:
            hook.replace = h_flat.view(1, *h0.shape[1:])
            eps = backbone.unet(x_in, t).sample
        return (eps if mask is None else eps * mask.to(eps.dtype)).reshape(-1)

    return torch.autograd.functional.jacobian(f, h0.reshape(-1), vectorize=True), tuple(h0.shape[1:])


def assert_top_k(res, J: torch.Tensor, k: int, tol: float = 1e-4) -> None:
    U, S, Vh = torch.linalg.svd(J.double(), full_matrices=False)
    V = res.V.reshape(k, -1).double()
    assert torch.allclose(res.S.double(), S[:k], rtol=tol, atol=0), (res.S, S[:k])
    signs = torch.sign((V * Vh[:k]).sum(1))
    assert (V - signs[:, None] * Vh[:k]).abs().max() < tol
    if res.U is not None:
        assert (res.U.reshape(k, -1).double() - signs[:, None] * U[:, :k].T).abs().max() < tol


# ----------------------------------------------------------------------------------------------
# Math

@pytest.mark.parametrize("variant,block,iters", [("batched", 1, 80), ("sequential", 2, 80)])
def test_subspace_iteration_matches_explicit_jacobian(micro: Backbone, variant: str, block: int, iters: int) -> None:
    x, t = trajectory_state(micro, step=1)
    J, h_shape = explicit_jacobian(micro, x, t)
    assert J.shape == (3 * 16 * 16, 8 * 4 * 4)
    res = jacobian_svd(micro, x, t, None, h_shape, 3, variant=variant, block_size=block,
                       stop=StopCriterion(tol=0.0, max_iters=iters), generator=torch.Generator().manual_seed(0),
                       compute_u=True)
    assert res.V.dtype == torch.float64 and res.V.shape == (3, *h_shape)
    assert_top_k(res, J, 3)


def test_masked_variant_matches_masked_explicit_jacobian(micro: Backbone) -> None:
    x, t = trajectory_state(micro, step=2)
    mask = region_mask((0.0, 0.25, 0.5, 0.75), (16, 16))
    J, h_shape = explicit_jacobian(micro, x, t, mask)
    J_full, _ = explicit_jacobian(micro, x, t)
    assert torch.equal(J.view(3, 16, 16, -1)[:, :4], torch.zeros_like(J.view(3, 16, 16, -1)[:, :4]))  # rows outside M
    res = jacobian_svd(micro, x, t, None, h_shape, 3, mask=mask, stop=StopCriterion(tol=0.0, max_iters=80),
                       generator=torch.Generator().manual_seed(0), compute_u=True)
    assert_top_k(res, J, 3)
    # It is a different problem from the unmasked one.
    assert (res.V[0].reshape(-1).abs() - torch.linalg.svd(J_full)[2][0].abs()).abs().max() > 1e-2


def test_region_mask_on_pixel_and_latent_grids() -> None:
    m32 = region_mask((0.25, 0.0, 0.5, 1.0), (32, 32))
    m16 = region_mask((0.25, 0.0, 0.5, 1.0), (16, 16))
    assert m32.shape == (1, 1, 32, 32) and m16.shape == (1, 1, 16, 16)
    assert m32[0, 0, :, 8:16].eq(1).all() and m32.sum() == 32 * 8
    assert m16[0, 0, :, 4:8].eq(1).all() and m16.sum() == 16 * 4
    with pytest.raises(ValueError, match="covers no cell"):
        region_mask((0.5, 0.5, 0.51, 0.51), (16, 16))
    with pytest.raises(ConfigError, match="mask"):
        from_dict(JacobianOptions, {"mask": [0.5, 0.0, 0.2, 1.0]})
    with pytest.raises(ConfigError, match="component"):
        from_dict(JacobianOptions, {"k": 2, "component": 2})


def test_cfg_jacobian_is_the_guided_combination(tiny_sd: Backbone) -> None:
    """With CFG the same Δh enters both halves: J v = (1 − w) J_uncond v + w J_cond v."""
    w = 7.5
    x = torch.randn((1, *tiny_sd.state_shape()), generator=torch.Generator().manual_seed(0))
    guided = make_condition(tiny_sd, ["a photo of a person"], w)
    only_cond = Condition(guided.cond, guided.cond, 1.0)
    only_uncond = Condition(guided.uncond, guided.uncond, 1.0)
    with MidBlockHook(tiny_sd.unet) as hook, torch.no_grad():
        predict_eps(tiny_sd, x, 501, only_cond)
        h_shape = tuple(hook.raw.shape[1:])
    v = torch.randn((2, *h_shape), generator=torch.Generator().manual_seed(1))
    zero = torch.zeros((1, *h_shape))
    jv = {name: batched_jvp(eps_of_h_shift(tiny_sd, x, 501, c), zero, v)
          for name, c in (("guided", guided), ("cond", only_cond), ("uncond", only_uncond))}
    expected = (1 - w) * jv["uncond"] + w * jv["cond"]
    assert torch.allclose(jv["guided"], expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    # And the JVP is the derivative: central finite difference of the guided ε along v.
    f = eps_of_h_shift(tiny_sd, x, 501, guided)
    a = 1e-2
    with torch.no_grad():
        fd = (f(a * v[:1]) - f(-a * v[:1])) / (2 * a)
    assert (fd - jv["guided"][:1]).abs().max() < 2e-2 * jv["guided"][:1].abs().max()


# ----------------------------------------------------------------------------------------------
# The method

def small_options(**kw) -> JacobianOptions:
    return JacobianOptions(**{"k": 2, "component": 0, "convergence": StopCriterion(max_iters=2), **kw})


def test_strength_zero_is_unedited_and_edits_are_deterministic(tiny_unet: Backbone) -> None:
    item = load_suite("hspace_paper").item("smile")
    requests = [EditRequest("a", item, 0.0, 11), EditRequest("b", item, 20.0, 11), EditRequest("c", item, -20.0, 12)]
    sampler = SamplerConfig(num_steps=3, eta=1.0)
    method = JacobianSubspace(small_options())
    first = method.edit(tiny_unet, {}, requests, sampler)
    second = method.edit(tiny_unet, {}, requests, sampler)
    for a, b in zip(first, second):
        assert torch.equal(a.edited, b.edited) and torch.equal(a.original, b.original)
    assert torch.equal(to_uint8(first[0].edited), to_uint8(first[0].original))
    assert not torch.equal(to_uint8(first[1].edited), to_uint8(first[1].original))
    assert not torch.equal(to_uint8(first[2].edited), to_uint8(first[2].original))
    # Requests of one sample share its directions; another sample gets its own.
    assert first[0].info == first[1].info
    assert first[0].info["sigma_source"] != first[2].info["sigma_source"]
    assert first[1].info["source_step"] == 1 and first[1].info["component"] == 0
    assert first[1].edited.shape == (3, 32, 32) and 0 <= first[1].edited.min() and first[1].edited.max() <= 1


def test_edit_applies_sigma_scaled_direction_from_the_source_step(micro: Backbone) -> None:
    """Δh_t = γ σ_{j,t} v_{j,t*}: replaying that Δh through `denoise` reproduces the method's image."""
    item = SuiteItem(id="x", attribute="a")
    sampler = SamplerConfig(num_steps=4, eta=0.0)
    opts = small_options(component=1, source_step=2, convergence=StopCriterion(max_iters=3))
    method = JacobianSubspace(opts)
    out = method.edit(micro, {}, [EditRequest("u", item, 3.0, 5)], sampler)[0]
    schedule = Schedule.from_backbone(micro, 4)
    x_T, _ = initial_noise([5], micro.state_shape(), 4, 0.0)
    trace = Trace(record_h=False)
    denoise(micro, x_T, schedule, None, trace=trace)
    d = method.directions(micro, trace.xs, schedule, None, 5)
    assert d["source_step"] == 2 and d["sigmas"].shape == (2, 4) and torch.isfinite(d["sigmas"]).all()
    assert (d["sigmas"][0] >= d["sigmas"][1]).all()
    x0 = denoise(micro, x_T, schedule, None, delta_h=lambda i: 3.0 * d["sigmas"][1, i] * d["vectors"][1][None])
    assert torch.allclose(micro.decode(x0)[0], out.edited, atol=1e-6)
    # Without singular values only t* is analysed.
    d = JacobianSubspace(small_options(apply_svals=False, source_step=2)).directions(micro, trace.xs, schedule, None, 5)
    assert torch.isnan(d["sigmas"][:, [0, 1, 3]]).all() and torch.isfinite(d["sigmas"][:, 2]).all()
    with pytest.raises(ValueError, match="source_step"):
        JacobianSubspace(small_options(source_step=4)).edit(micro, {}, [EditRequest("u", item, 1.0, 5)], sampler)


def test_reference_directions_transfer(micro: Backbone) -> None:
    """Directions from prepare (reference seed) equal per-sample directions for that seed, and transfer."""
    item = SuiteItem(id="x", attribute="a")
    suite = Suite(name="s", version=1, items=(item,))
    sampler = SamplerConfig(num_steps=3, eta=1.0)
    ref = JacobianSubspace(small_options(directions_from="reference", variant="sequential"))
    state = ref.prepare(micro, PrepareContext(suite=suite, sampler=sampler, seed=7))
    assert set(state["directions"]) == {""} and state["reference_seed"] == 7
    same = [EditRequest("a", item, 2.0, 7)]
    per_sample = JacobianSubspace(small_options(variant="sequential")).edit(micro, {}, same, sampler)
    transferred = ref.edit(micro, state, same, sampler)
    assert torch.equal(per_sample[0].edited, transferred[0].edited)
    other = ref.edit(micro, state, [EditRequest("b", item, 2.0, 8)], sampler)[0]
    assert other.info["directions_from"] == "reference"
    assert other.info["sigma_source"] == transferred[0].info["sigma_source"]
    assert not torch.equal(to_uint8(other.edited), to_uint8(other.original))
    assert JacobianSubspace(small_options()).prepare(micro, PrepareContext(suite=suite, sampler=sampler, seed=7)) == {}


def test_text_model_masked_edit(tiny_sd: Backbone) -> None:
    item = load_suite("hspace_paper").item("smile")
    method = JacobianSubspace(small_options(mask=(0.25, 0.25, 0.75, 0.75), k=1, apply_svals=False))
    requests = [EditRequest("a", item, 0.0, 3), EditRequest("b", item, 50.0, 3)]
    out = method.edit(tiny_sd, {}, requests, SamplerConfig(num_steps=3, guidance_scale=7.5))
    assert torch.equal(to_uint8(out[0].edited), to_uint8(out[0].original))
    assert not torch.equal(to_uint8(out[1].edited), to_uint8(out[1].original))


def test_end_to_end_through_the_harness(tmp_path) -> None:
    _, rows = run_through_harness(
        tmp_path, 4, run_id="jac", models=["tiny-unet"], items=["smile"], seeds=[0], strengths=[0.0, 10.0],
        sampler={"num_steps": 3, "eta": 1.0},
        methods=[
            {"name": "jacobian", "options": {"k": 2, "component": 0, "convergence": {"max_iters": 2}}},
            {"name": "jacobian", "label": "jacobian-ref", "options": {
                "k": 2, "variant": "sequential", "block_size": 1, "directions_from": "reference",
                "mask": [0.0, 0.0, 0.5, 0.5], "convergence": {"max_iters": 2}, "apply_svals": False,
                "scorer": {"kind": "channel-mean"}, "calibration": {"n_samples": 2}}},
        ])
    for method, info in zip(rows["method"], rows["info"].map(json.loads)):
        if method == "jacobian":
            assert (info["component"], info["sign"], info["calibrated"]) == (0, 1, False)
        else:
            assert info["calibrated"] is True and info["component"] in (0, 1) and info["sign"] in (1, -1)
            assert len(info["calibration_gains"]) == 2


# ----------------------------------------------------------------------------------------------
# The same explicit check on tiny-unet (h 32x8x8, ε 3x32x32): minutes on 2 CPU cores.

@pytest.mark.slow
def test_tiny_unet_matches_explicit_jacobian(tiny_unet: Backbone) -> None:
    from harness.models import load_backbone

    backbone = load_backbone("tiny-unet")
    backbone.unet.double()
    x, t = trajectory_state(backbone, step=1)
    with MidBlockHook(backbone.unet) as hook, torch.no_grad():
        backbone.unet(x.double(), t)
        h0 = hook.raw.clone()

    def f(h: torch.Tensor) -> torch.Tensor:
        with MidBlockHook(backbone.unet) as hook:
            hook.replace = h
            return backbone.unet(x.double().expand(h.shape[0], -1, -1, -1), t).sample

    J = torch.func.jacrev(lambda h: f(h.view(1, *h0.shape[1:])).reshape(-1), chunk_size=256)(h0.reshape(-1))
    for variant in ("batched", "sequential"):
        res = jacobian_svd(backbone, x, t, None, h0.shape[1:], 3, variant=variant, block_size=2,
                           stop=StopCriterion(tol=0.0, max_iters=150), generator=torch.Generator().manual_seed(0))
        assert_top_k(res, J, 3)
