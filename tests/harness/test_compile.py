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
        predict_eps(backbone, x, 500, None, hook)
    predict_eps(backbone, x.clone().requires_grad_(), 500, None)  # grad enabled
    jvp(lambda z: predict_eps(backbone, z, 500, None), x, torch.randn_like(x))
    with torch.no_grad():
        # an h-space edit through the shared loop registers the hook, so it must not use the graph
        denoise(backbone, x, Schedule.from_backbone(backbone, 2), delta_h=lambda i: torch.ones(1))
    assert backbone.compiled_unet.calls == 0
    assert not use_compiled(backbone, x)  # grad mode is on here


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
