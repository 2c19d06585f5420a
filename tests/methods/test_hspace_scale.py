"""The strength scale and timestep window every h-space method shares (methods/_hspace.py).

Checked against an explicit computation: hooks outside the harness record, for every UNet call, the
mid-block output the model produced (raw h) and the h the decoder half received (shifted h); their
difference is the Δh actually applied, compared with |γ|·‖h_t‖ (relative) step by step.
"""
from __future__ import annotations

from typing import Any

import pytest
import torch

from harness.config import SamplerConfig
from harness.diffusion import Schedule
from harness.errors import ConfigError
from harness.schema import from_dict
from harness.suites import load_suite
from methods.base import EditRequest, PrepareContext
from methods.hspace_pca import HSpacePCA, HSpacePCAOptions
from methods.jacobian import JacobianOptions, JacobianSubspace
from methods.random_direction import RandomDirection, RandomDirectionOptions
from methods.supervised import Supervised, SupervisedOptions
from methods._hspace import steps_in_window
from methods._scorers import ScorerSpec
from methods._subspace import StopCriterion

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLER = SamplerConfig(num_steps=4, eta=0.0, guidance_scale=1.0)
WINDOW = (0.5, 1.0)


class AppliedDelta:
    """Per UNet call: the timestep, the raw mid-block output and the h the up path received."""

    def __init__(self, unet: Any) -> None:
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._t: int | None = None
        self._raw: torch.Tensor | None = None
        # Registered before any MidBlockHook, so the mid-block hook here sees the unshifted output.
        self.handles = [
            unet.register_forward_pre_hook(self._timestep, with_kwargs=True),
            unet.mid_block.register_forward_hook(self._mid),
            unet.up_blocks[0].register_forward_pre_hook(self._up),
        ]

    def _timestep(self, module, args, kwargs) -> None:
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        self._t = int(t)

    def _mid(self, module, inputs, output) -> None:
        self._raw = output.detach().clone()

    def _up(self, module, args) -> None:
        self.calls.append((self._t, self._raw, args[0].detach().clone()))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def test_steps_in_window_follow_the_timesteps(micro) -> None:
    schedule = Schedule.from_backbone(micro, 4)
    assert schedule.timesteps == (751, 501, 251, 1)
    assert steps_in_window(schedule, (0.5, 1.0)) == [True, True, False, False]
    assert steps_in_window(schedule, (0.0, 0.3)) == [False, False, True, True]
    assert steps_in_window(schedule, (0.0, 1.0)) == [True] * 4


def _method(name: str, scale: str, window: tuple[float, float]):
    common = {"strength_scale": scale, "window": window}
    if name == "random-direction":
        return RandomDirection(RandomDirectionOptions(scale=3.0, **common))
    if name == "hspace-pca":
        # a fixed component: this test is about the strength scale, not the calibrated choice (no scorer needed)
        return HSpacePCA(HSpacePCAOptions(n_samples=4, n_components=2, batch_size=4, component=0, **common))
    if name == "supervised":
        return Supervised(SupervisedOptions(n_samples=4, n_examples=1, batch_size=4,
                                            scorer=ScorerSpec(kind="channel-mean"), **common))
    return JacobianSubspace(JacobianOptions(k=1, directions_from="reference", scale=50.0, component=0,
                                            convergence=StopCriterion(max_iters=4), **common))


@pytest.mark.parametrize("name", ["random-direction", "hspace-pca", "supervised", "jacobian"])
def test_relative_strength_is_a_fraction_of_h_norm_inside_the_window_only(micro, name) -> None:
    suite = load_suite("hspace_paper")
    method = _method(name, "relative", WINDOW)
    state = method.prepare(micro, PrepareContext(suite=suite, sampler=SAMPLER, seed=3))
    strengths = [0.25, -0.1]
    requests = [EditRequest(f"u{i}", suite.item("smile"), s, 7) for i, s in enumerate(strengths)]
    inside = {t for t, ok in zip(Schedule.from_backbone(micro, 4).timesteps, steps_in_window(
        Schedule.from_backbone(micro, 4), WINDOW)) if ok}
    rec = AppliedDelta(micro.unet)
    try:
        out = method.edit(micro, state, requests, SAMPLER)
    finally:
        rec.remove()
    edited_steps = set()
    for t, raw, shifted in rec.calls:
        diff = (shifted - raw).flatten(1)
        if t not in inside:
            assert torch.equal(shifted, raw), f"step t={t} outside the window was shifted"
            continue
        for b, gamma in enumerate(strengths):
            if torch.count_nonzero(diff[b]) == 0:
                continue  # an unedited pass (the original image)
            expected = abs(gamma) * raw[b].flatten().norm()
            torch.testing.assert_close(diff[b].norm(), expected, rtol=1e-6, atol=0)
            edited_steps.add(t)
    assert edited_steps == inside  # every step in the window was edited, with the right magnitude
    assert all(not torch.equal(o.original, o.edited) for o in out)


def test_relative_direction_is_the_methods_own_and_strength_zero_is_unedited(micro) -> None:
    """Relative keeps the method's direction (and γ's sign): Δh ∝ sign(γ)·v; γ = 0 stays byte-identical."""
    suite = load_suite("hspace_paper")
    method = _method("random-direction", "relative", (0.0, 1.0))
    state = method.prepare(micro, PrepareContext(suite=suite, sampler=SAMPLER, seed=3))
    v = state["direction"].double().flatten()
    requests = [EditRequest("a", suite.item("smile"), -0.2, 7), EditRequest("b", suite.item("smile"), 0.0, 7)]
    rec = AppliedDelta(micro.unet)
    try:
        out = method.edit(micro, state, requests, SAMPLER)
    finally:
        rec.remove()
    shifted = [(s - r).flatten(1)[0] for _, r, s in rec.calls if torch.count_nonzero(s - r)]
    assert len(shifted) == 4  # the four steps of the edited pass of request a
    for d in shifted:
        torch.testing.assert_close(torch.nn.functional.cosine_similarity(d, v, dim=0).item(), -1.0)
    assert torch.equal(out[1].original, out[1].edited)


def test_absolute_window_leaves_steps_outside_unchanged(micro) -> None:
    suite = load_suite("hspace_paper")
    requests = [EditRequest("a", suite.item("smile"), 5.0, 7)]
    ctx = PrepareContext(suite=suite, sampler=SAMPLER, seed=3)
    nowhere = _method("random-direction", "absolute", (0.0, 0.0))  # t >= 1 at every step: no step inside
    out = nowhere.edit(micro, nowhere.prepare(micro, ctx), requests, SAMPLER)
    assert torch.equal(out[0].original, out[0].edited)
    everywhere = _method("random-direction", "absolute", (0.0, 1.0))
    out = everywhere.edit(micro, everywhere.prepare(micro, ctx), requests, SAMPLER)
    assert not torch.equal(out[0].original, out[0].edited)


@pytest.mark.parametrize("cls", [RandomDirectionOptions, HSpacePCAOptions, SupervisedOptions, JacobianOptions])
def test_bad_scale_or_window_is_refused_naming_the_key(cls) -> None:
    with pytest.raises(ConfigError, match=r"methods\[m\]\.options\.window"):
        from_dict(cls, {"window": [0.8, 0.2]}, prefix="methods[m].options")
    with pytest.raises(ConfigError, match=r"methods\[m\]\.options\.strength_scale"):
        from_dict(cls, {"strength_scale": "percent"}, prefix="methods[m].options")
    assert from_dict(cls, {"strength_scale": "relative", "window": [0.3, 1]}).window == (0.3, 1.0)
