"""Asyrp (Kwon et al., ICLR 2023) against kwonminki/Asyrp_official's conventions, computed here independently.

- the CLIP directional loss and the training objective: recomputed with the CLIP model's own API (text and image
  features, the preprocessing written out), the UNet called directly with a plain forward hook, P_t by hand, and
  the official loss -log((2 - L_dir)/2) + l1_w · cos(texts) · mean|P_t^edit - P_t^orig|; values and gradients;
- the asymmetric reverse process: x_{t-1} = sqrt(ᾱ_{t-1}) P_t(ε(x_t | h_t + Δh_t)) + D_t(ε(x_t)) (+ σ_t z with
  η = 1 in the boosting interval), stepped by hand from x_T, against the method's edit; the symmetric variant
  (D_t from the edited ε too) is shown to fall outside the tolerance;
- strength 0 and f ≡ 0 return the unedited sample byte for byte;
- training lowers the loss, and a control with a vanishing learning rate shows the comparison can fail.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.config import REPO_ROOT, SamplerConfig
from harness.diffusion import Schedule
from harness.suites import Attribute, Suite, SuiteItem
from methods.asyrp import Asyrp, AsyrpOptions, DeltaBlock, TrainingTarget, training_step
from methods.base import EditRequest, PrepareContext
from methods._clip_loss import ClipSpec, directional_loss, load_directional_clip, text_direction
from methods._common import generate, request_noise

pytestmark = pytest.mark.usefixtures("one_thread")

CLIP = ClipSpec(backend="transformers", model=str(REPO_ROOT / "checkpoints" / "world-clip"))
SOURCE, TARGET = "a small shape", "a large shape"
SUITE = Suite(name="asyrp-test", version=1,
              items=(SuiteItem(id="big", attribute="large", prompt="", target_prompt=""),),
              attributes={"large": Attribute(positive=TARGET, negative=SOURCE)})


@pytest.fixture(scope="module")
def clip():
    return load_directional_clip(CLIP)


def _net(channels: int, temb_dim: int, seed: int = 0, scale: float = 1.0) -> DeltaBlock:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DeltaBlock(channels, temb_dim)
    with torch.no_grad():
        net.conv2.weight.mul_(scale)
        net.conv2.bias.mul_(scale)
    return net


def _dims(backbone) -> tuple[int, int]:
    unet = backbone.unet
    return unet.config.block_out_channels[-1], unet.time_embedding.linear_2.out_features


def _entry(net: DeltaBlock, backbone) -> dict:
    channels, temb_dim = _dims(backbone)
    return {"weights": {k: v.detach().clone() for k, v in net.state_dict().items()}, "channels": channels,
            "temb_dim": temb_dim, "source": SOURCE, "target": TARGET, "text_cosine": 0.5,
            "losses": torch.zeros(1, 1)}


# -- explicit computations (no code of methods/ below) ---------------------------------------------------------

def _temb(unet, t: int, dtype) -> torch.Tensor:
    return unet.time_embedding(unet.time_proj(torch.tensor([t])).to(dtype))


def _eps(unet, x: torch.Tensor, t: int, shift=None) -> torch.Tensor:
    """The UNet's ε (micro-unet predicts ε) with an optional h -> h + shift(h) on the mid-block output."""
    handle = unet.mid_block.register_forward_hook(lambda m, i, h: h + shift(h)) if shift is not None else None
    try:
        return unet(x, t).sample
    finally:
        if handle is not None:
            handle.remove()


def _clip_image_features(clip_model, processor, images01: torch.Tensor) -> torch.Tensor:
    ip = processor.image_processor
    size = ip.crop_size["height"]
    x = images01.float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    return clip_model.get_image_features(pixel_values=(x - mean) / std)


def _clip_text_features(clip_model, processor, texts: list[str]) -> torch.Tensor:
    tok = processor(text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        f = clip_model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
    return f / f.norm(dim=-1, keepdim=True)


# -- the directional loss ---------------------------------------------------------------------------------------

def test_directional_loss_is_one_minus_cosine_of_normalised_differences() -> None:
    g = torch.Generator().manual_seed(0)
    src, edit = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    t_src, t_trg = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    d_text = sum(t_trg[k] / t_trg[k].norm() - t_src[k] / t_src[k].norm() for k in range(4)) / 4
    d_text = d_text / d_text.norm()
    torch.testing.assert_close(text_direction(t_src, t_trg), d_text)
    got = directional_loss(src, edit, d_text)
    for b in range(3):
        d_img = edit[b] / edit[b].norm() - src[b] / src[b].norm()
        d_img = d_img / (d_img.norm() + 1e-7)
        expected = 1 - float(d_img @ d_text) / float(d_img.norm() * d_text.norm())
        assert math.isclose(float(got[b]), expected, rel_tol=1e-12)
    # An unchanged image has ΔI = 0: loss 1, not NaN (the official + 1e-7).
    assert torch.equal(directional_loss(src, src, d_text), torch.ones(3, dtype=torch.float64))


def test_training_objective_matches_an_independent_computation(micro, clip) -> None:
    unet, sched = micro.unet, micro.scheduler
    schedule = Schedule.from_backbone(micro, 4)
    i, t = 1, schedule.timesteps[1]
    channels, temb_dim = _dims(micro)
    net = _net(channels, temb_dim, seed=3).double()
    g = torch.Generator().manual_seed(1)
    x_edit = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    x_orig = x_edit + 0.1 * torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    source_images = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    model, processor = clip.scorer.model, clip.scorer.processor

    # Independent: CLIP features and text direction through the model's own API, P_t by hand.
    with torch.no_grad():
        src_feat = _clip_image_features(model, processor, source_images)
    text = _clip_text_features(model, processor, [SOURCE, TARGET])
    d_text = (text[1] - text[0]) / (text[1] - text[0]).norm()
    cos_text = float(text[0] @ text[1])
    a = float(sched.alphas_cumprod[t])
    temb = _temb(unet, t, torch.float64)
    eps_e = _eps(unet, x_edit, t, shift=lambda h: net(h, temb))
    with torch.no_grad():
        eps_o = _eps(unet, x_orig, t)
    p_e = (x_edit - (1 - a) ** 0.5 * eps_e) / a**0.5
    p_o = (x_orig - (1 - a) ** 0.5 * eps_o) / a**0.5
    f_e = _clip_image_features(model, processor, (p_e + 1) / 2)
    d_img = f_e / f_e.norm(dim=-1, keepdim=True) - src_feat / src_feat.norm(dim=-1, keepdim=True)
    d_img = d_img / (d_img.norm(dim=-1, keepdim=True) + 1e-7)
    l_dir = (1 - (d_img @ d_text) / (d_img.norm(dim=-1) * d_text.norm())).mean()
    expected = 1.0 * -torch.log((2 - l_dir) / 2) + 3.0 * cos_text * (p_e - p_o).abs().mean()
    expected_grad = torch.autograd.grad(expected, list(net.parameters()))

    target = TrainingTarget(clip.image_features(source_images).detach(), clip.text_direction(SOURCE, TARGET),
                            clip.text_cosine(SOURCE, TARGET))
    loss, parts, x_edit_next, x_orig_next = training_step(micro, net, clip, schedule, i, x_edit, x_orig,
                                                          target.source_features, target, 1.0, 3.0)
    grad = torch.autograd.grad(loss, list(net.parameters()))
    assert float(expected.detach()) > 0 and parts["l1"] > 0
    torch.testing.assert_close(loss.double(), expected.double(), rtol=1e-5, atol=0)
    for a_, b_ in zip(grad, expected_grad):
        torch.testing.assert_close(a_, b_, rtol=1e-4, atol=1e-7)
    # Next states: the edited trajectory steps asymmetrically (D_t from the unedited ε at x_edit), η = 0.
    a_prev = float(sched.alphas_cumprod[schedule.timesteps[2]])
    with torch.no_grad():
        eps_plain = _eps(unet, x_edit, t)
    # (the harness's DDIM state is float32 whatever the UNet dtype: float32 rounding only)
    torch.testing.assert_close(x_edit_next.double(), a_prev**0.5 * p_e.detach() + (1 - a_prev) ** 0.5 * eps_plain,
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(x_orig_next.double(), a_prev**0.5 * p_o + (1 - a_prev) ** 0.5 * eps_o, rtol=0, atol=1e-5)
    # The objective sees the edit: without Δh the same formula gives another value (so the check can fail).
    f_plain = _clip_image_features(model, processor, ((x_edit - (1 - a) ** 0.5 * eps_plain) / a**0.5 + 1) / 2)
    assert not torch.allclose(f_plain, f_e, rtol=1e-3)


# -- the asymmetric reverse process ------------------------------------------------------------------------------

def _by_hand(micro, net: DeltaBlock, x_T: torch.Tensor, gamma: float, factor: float, num_steps: int,
             t_boost: float, noise: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    """The official denoising_step with index set, from x_T, every step in the editing interval (window [0, 1])."""
    unet, sched = micro.unet, micro.scheduler
    gap = 1000 // num_steps
    ts = [1 + gap * k for k in reversed(range(num_steps))]  # diffusers leading spacing with steps_offset 1
    x = x_T.clone()
    for i, t in enumerate(ts):
        a = float(sched.alphas_cumprod[t])
        a_next = float(sched.alphas_cumprod[t - gap]) if t - gap >= 0 else 1.0
        temb = _temb(unet, t, torch.float64)
        with torch.no_grad():
            et_modified = _eps(unet, x, t, shift=lambda h, temb=temb: gamma * factor * net(h, temb))
            et = et_modified if symmetric else _eps(unet, x, t)
        x0_t = (x - et_modified * (1 - a) ** 0.5) / a**0.5
        if t < t_boost * 1000:  # quality boosting: η = 1
            c1 = ((1 - a / a_next) * (1 - a_next) / (1 - a)) ** 0.5
            c2 = ((1 - a_next) - c1**2) ** 0.5
            x = a_next**0.5 * x0_t + c2 * et + c1 * noise[i]
        else:
            x = a_next**0.5 * x0_t + (1 - a_next) ** 0.5 * et
    return ((x + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("t_boost", [0.0, 0.3])
def test_edit_follows_the_official_asymmetric_reverse_process(micro, t_boost: float) -> None:
    # Grid 751, 501, 251, 1; t_boost 0.3 boosts the last two steps (η = 1 at t = 251 draws real noise).
    channels, temb_dim = _dims(micro)
    net = _net(channels, temb_dim, seed=5).double()
    sampler = SamplerConfig(num_steps=4, eta=0.0, guidance_scale=1.0)
    state = {"nets": {"large": _entry(net, micro)}, "train_steps": 8}   # factor n_train / n_test = 2
    method = Asyrp(AsyrpOptions(window=(0.0, 1.0), t_boost=t_boost, clip=CLIP))
    request = EditRequest("u", SUITE.items[0], 1.5, 21)
    out = method.edit(micro, state, [request], sampler)[0]
    x_T = torch.randn((3, 16, 16), generator=torch.Generator().manual_seed(21)).double()
    noise = request_noise([request], micro.state_shape(), "asyrp-boost", n=4)[0].double()
    expected = _by_hand(micro, net, x_T[None], 1.5, 2.0, 4, t_boost, noise)[0]
    assert out.info["boosted"] is (t_boost > 0)
    # The harness keeps the DDIM state in float32 (sampler.py): float32 rounding of a 4-step trajectory only.
    torch.testing.assert_close(out.edited, expected.float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.original, generate(micro, [request], sampler)[0], rtol=0, atol=0)
    # Wrong conventions are far outside the tolerance: D_t from the edited ε, no n_train/n_test factor, and
    # (with boosting) the boost left out.
    wrongs = [_by_hand(micro, net, x_T[None], 1.5, 2.0, 4, t_boost, noise, symmetric=True)[0],
              _by_hand(micro, net, x_T[None], 1.5, 1.0, 4, t_boost, noise)[0]]
    if t_boost:
        wrongs.append(_by_hand(micro, net, x_T[None], 1.5, 2.0, 4, 0.0, noise)[0])
    for wrong in wrongs:
        assert (out.edited - wrong.float()).abs().max() > 1e-3


def test_strength_zero_and_zero_network_give_the_unedited_sample(micro) -> None:
    channels, temb_dim = _dims(micro)
    sampler = SamplerConfig(num_steps=4, eta=0.0, guidance_scale=1.0)
    trained = _entry(_net(channels, temb_dim, seed=2).double(), micro)
    zero = _entry(_net(channels, temb_dim, seed=2, scale=0.0).double(), micro)   # f ≡ 0 (last conv zeroed)
    method = Asyrp(AsyrpOptions(t_boost=0.3, clip=CLIP))
    reqs = [EditRequest("a", SUITE.items[0], 0.0, 31), EditRequest("b", SUITE.items[0], 2.0, 32)]
    out = method.edit(micro, {"nets": {"large": trained}, "train_steps": 4}, reqs, sampler)
    assert torch.equal(out[0].edited, out[0].original) and not out[0].info["boosted"]
    assert not torch.allclose(out[1].edited, out[1].original, atol=1e-3)   # the same state does edit
    no_boost = Asyrp(AsyrpOptions(clip=CLIP))
    out = no_boost.edit(micro, {"nets": {"large": zero}, "train_steps": 4}, reqs, sampler)
    for o in out:
        assert torch.equal(o.edited, o.original) and o.info["dh_ratio"] == 0.0


# -- training ------------------------------------------------------------------------------------------------------

def _prepare(micro, lr: float) -> dict:
    opts = AsyrpOptions(clip=CLIP, n_train_images=2, n_iter=3, lr=lr, lr_step=10, train_steps=4)
    return Asyrp(opts).prepare(micro, PrepareContext(SUITE, SamplerConfig(num_steps=4, eta=0.0), seed=0))


def test_training_lowers_the_loss(micro) -> None:
    losses = _prepare(micro, lr=0.5)["nets"]["large"]["losses"]
    assert losses.shape == (3, 4)                      # 3 passes x (2 images x 2 steps with t >= T/2)
    first, last = losses[0].mean(), losses[-1].mean()
    assert last < first - 0.05, losses
    # Control: without learning, the passes repeat the same losses, so the comparison above can fail.
    still = _prepare(micro, lr=1e-12)["nets"]["large"]["losses"]
    torch.testing.assert_close(still[-1], still[0], rtol=1e-5, atol=0)
    assert still[0, 0] == losses[0, 0]   # same images, same initial network (later steps differ: it learns)
