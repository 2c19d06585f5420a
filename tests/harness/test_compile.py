"""ExecutorConfig.compile: the compiled UNet serves plain inference only; hooks and autodiff stay eager."""
from __future__ import annotations

import pytest
import torch

from harness.diffusion import Schedule
from harness.diffusion.autodiff import jvp
from harness.diffusion.compile import use_compiled
from harness.diffusion.hspace import MidBlockHook
from harness.diffusion.sampler import denoise, predict_eps
from harness.models import load_backbone


class CountingUnet(torch.nn.Module):
    """Stands in for the compiled module: the same function, with a call counter."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet, self.calls = unet, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.unet(*args, **kwargs)


@pytest.fixture()
def backbone():
    b = load_backbone("tiny-unet", "cpu")
    b.compiled_unet = CountingUnet(b.unet)
    return b


def test_plain_inference_goes_to_the_compiled_unet(backbone) -> None:
    x = torch.randn(2, *backbone.state_shape())
    with torch.no_grad():
        predict_eps(backbone, x, 500, None)
        denoise(backbone, x, Schedule.from_backbone(backbone, 3))
    assert backbone.compiled_unet.calls == 4


def test_hooks_grad_and_autodiff_stay_eager(backbone) -> None:
    x = torch.randn(1, *backbone.state_shape())
    with torch.no_grad(), MidBlockHook(backbone.unet) as hook:
        hook.delta = torch.ones(1)
        predict_eps(backbone, x, 500, None)
    predict_eps(backbone, x.clone().requires_grad_(), 500, None)  # grad enabled
    jvp(lambda z: predict_eps(backbone, z, 500, None), x, torch.randn_like(x))
    with torch.no_grad():
        # an h-space edit through the shared loop registers the hook, so it must not use the graph
        denoise(backbone, x, Schedule.from_backbone(backbone, 2), delta_h=lambda i: torch.ones(1))
    assert backbone.compiled_unet.calls == 0
    assert not use_compiled(backbone, x)  # grad mode is on here


def test_compile_time_is_recorded_apart_from_the_edit_time(tmp_path, monkeypatch) -> None:
    """Issue 17.1: torch.compile compiles inside the first call of each new graph, so the first timed batch paid
    for it. A stand-in compiler that takes 0.3 s on each new (shape, timestep), what dynamic=False specialises
    on: the rows' compile_seconds hold that time and edit_seconds do not."""
    import time

    import harness.diffusion.compile as compile_mod
    from tests.methods.conftest import run_through_harness

    def slow_first_call(module, **kwargs):
        seen = set()

        def call(*args, **kw):
            if (tuple(args[0].shape), args[1]) not in seen:
                seen.add((tuple(args[0].shape), args[1]))
                time.sleep(0.3)
            return module(*args, **kw)
        return call

    monkeypatch.setattr(compile_mod.torch, "compile", slow_first_call)
    monkeypatch.setenv("HARNESS_COMPILE_CACHE", str(tmp_path / "cache"))
    _, rows = run_through_harness(tmp_path, 2, models=["tiny-unet"], items=["smile"], seeds=2, strengths=[1.0],
                                  methods=[{"name": "random-direction"}], executor={"kind": "inprocess",
                                                                                   "batch_size": 2, "compile": True},
                                  sampler={"num_steps": 2})
    # one batch of 2, 2 steps: two graphs (0.6 s, plus the two calls' own forward), shared by the 2 units
    assert rows.compile_seconds.sum() >= 0.6 and rows.compile_seconds.nunique() == 1
    assert (rows.edit_seconds < 0.3).all()


def test_compile_timer_counts_first_calls_per_signature() -> None:
    from harness.diffusion.compile import CompileTimer

    calls = []
    timer = CompileTimer(torch.device("cpu"))
    f = timer.timed("f", lambda x, t: calls.append(t) or x)
    for shape, t in (((1, 2), 5), ((1, 2), 5), ((2, 2), 5), ((1, 2), 7)):
        f(torch.zeros(shape), t)
    assert len(timer._seen) == 3 and len(calls) == 4


@pytest.mark.slow
def test_torch_compile_matches_eager_and_keeps_h_space_edits(tmp_path, monkeypatch) -> None:
    from harness.diffusion.compile import compile_backbone

    monkeypatch.setenv("HARNESS_COMPILE_CACHE", str(tmp_path / "cache"))
    eager = load_backbone("tiny-unet", "cpu")
    compiled = compile_backbone(load_backbone("tiny-unet", "cpu"))
    x = torch.randn(2, *eager.state_shape(), generator=torch.Generator().manual_seed(0))
    schedule = Schedule.from_backbone(eager, 3)
    delta = lambda i: torch.full((1,), 0.5)  # noqa: E731
    with torch.no_grad():
        plain = [denoise(b, x, schedule) for b in (eager, compiled)]
        edited = [denoise(b, x, schedule, delta_h=delta) for b in (eager, compiled)]
    torch.testing.assert_close(plain[1], plain[0], rtol=1e-4, atol=1e-4)
    assert torch.equal(edited[1], edited[0])  # hooked calls ran the same eager module
    assert not torch.allclose(edited[0], plain[0])  # and the edit did something
    assert any((tmp_path / "cache").iterdir())
