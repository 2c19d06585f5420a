"""LPIPS wrapper against the lpips package on the same seeded random backbone and inputs."""
from __future__ import annotations

from pathlib import Path

import lpips
import pytest
import torch

from harness.errors import ConfigError, MissingWeightsError
from metrics.lpips_metric import LPIPSMetric
from tests.metrics.helpers import random_images


@pytest.mark.filterwarnings("ignore::UserWarning:torchvision.models._utils")  # lpips' own pretrained= call
@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_lpips_equals_reference_package(net: str) -> None:
    x, y = random_images(3, size=64, seed=1), random_images(3, size=64, seed=2)
    ours = LPIPSMetric(net=net, random_backbone=True, seed=7)
    torch.manual_seed(7)
    ref = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()
    # independent mapping of uint8 to [-1, 1]: lpips' own normalize=True path on x/255
    expected = ref(x.float() / 255.0, y.float() / 255.0, normalize=True).reshape(-1).double()
    got = ours(x, y)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert torch.all(got > 0) and torch.allclose(ours(x, x), torch.zeros(3, dtype=torch.float64), atol=1e-7)
    assert "RANDOM" in ours.implementation and ours.name.endswith("-random")


def test_lpips_seed_does_not_disturb_global_rng_and_changes_weights() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = LPIPSMetric(net="squeeze", random_backbone=True, seed=0)
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert a.weights_sha256 != LPIPSMetric(net="squeeze", random_backbone=True, seed=1).weights_sha256


def test_missing_backbone_weights_raise_before_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError) as err:
        LPIPSMetric(net="alex")
    msg = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in msg and "metrics.lpips.net" in msg and "random_backbone" in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg
    with pytest.raises(ConfigError):
        LPIPSMetric(net="resnet")


def test_lpips_rejects_float_or_mismatched_inputs() -> None:
    m = LPIPSMetric(net="squeeze", random_backbone=True)
    x = random_images(2, size=32)
    with pytest.raises(ValueError, match="uint8"):
        m(x.float(), x)
    with pytest.raises(ValueError, match="equal shapes"):
        m(x, random_images(2, size=40))
