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


# --- the embedded stand-in: LPIPS's formula on CLIP vision hidden states ---------------------------------

def test_clip_feature_lpips_equals_a_direct_per_layer_computation(tiny_hf_clip_dir: Path) -> None:
    import numpy as np
    from transformers import CLIPModel, CLIPProcessor

    from metrics.clip import load_clip_scorer
    from metrics.lpips_metric import ClipFeatureLPIPS

    metric = ClipFeatureLPIPS(load_clip_scorer("transformers", str(tiny_hf_clip_dir)))
    x, y = random_images(3, size=32, seed=1), random_images(3, size=32, seed=2)
    got = metric(x, y)
    # independent: the model and processor loaded afresh, the sum written out per layer and token in numpy
    model = CLIPModel.from_pretrained(tiny_hf_clip_dir).eval()
    proc = CLIPProcessor.from_pretrained(tiny_hf_clip_dir)

    def states(images):
        px = proc(images=[im for im in images], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            return [h.double().numpy() for h in model.vision_model(pixel_values=px, output_hidden_states=True).hidden_states]

    expected = np.zeros(3)
    for hx, hy in zip(states(x), states(y)):
        for i in range(3):
            per_token = [np.sum((a / np.linalg.norm(a) - b / np.linalg.norm(b)) ** 2) for a, b in zip(hx[i], hy[i])]
            expected[i] += np.mean(per_token)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)
    assert torch.all(got > 0)
    torch.testing.assert_close(metric(y, x), got)  # symmetric
    assert torch.allclose(metric(x, x), torch.zeros(3, dtype=torch.float64))
    assert metric.name.startswith("clip-features:") and "not AlexNet" in metric.implementation


def test_clip_feature_lpips_needs_a_transformers_clip(tiny_open_clip_config: Path) -> None:
    from metrics.clip import load_clip_scorer
    from metrics.lpips_metric import ClipFeatureLPIPS

    scorer = load_clip_scorer("open_clip", tiny_open_clip_config.stem, model_config=str(tiny_open_clip_config),
                              random_weights=True)
    with pytest.raises(ConfigError, match="metrics.lpips.backbone"):
        ClipFeatureLPIPS(scorer)


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_lpips_min_size_is_the_smallest_side_the_network_takes(net: str) -> None:
    # The stage leaves out smaller pairs by this table instead of letting the network raise mid-stage.
    from metrics.lpips_metric import LPIPS_MIN_SIZE

    metric = LPIPSMetric(net, random_backbone=True)
    s = LPIPS_MIN_SIZE[net]
    x = torch.zeros((1, 3, s, s), dtype=torch.uint8)
    assert metric(x, x).shape == (1,)
    with pytest.raises(RuntimeError):
        metric(x[..., 1:, 1:], x[..., 1:, 1:])
