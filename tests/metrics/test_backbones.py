"""Backbone registry, missing-weights errors, and the random test backbone."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from harness.errors import ConfigError, MissingWeightsError
from metrics.backbones import (
    INCEPTION_WEIGHTS_FILE, FeatureBackbone, RandomTestBackbone, available_backbones, build_backbone, register_backbone,
)
from tests.metrics.helpers import random_images


def test_missing_inception_weights_names_file_and_key(tmp_path: Path) -> None:
    missing = tmp_path / INCEPTION_WEIGHTS_FILE
    with pytest.raises(MissingWeightsError) as err:
        build_backbone("inception", weights=str(missing))
    msg = str(err.value)
    assert INCEPTION_WEIGHTS_FILE in msg and "metrics.fid.weights" in msg and str(missing) in msg
    assert err.value.key == "metrics.fid.weights"
    with pytest.raises(MissingWeightsError, match="metrics.fid.weights"):
        build_backbone("inception", weights=None)  # unset: never fall back to a download


def test_inception_from_local_file(tmp_path: Path) -> None:
    # A random-weight file in torch-fidelity's format stands in for the real one (which is not offline).
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _NoLoad(FeatureExtractorInceptionV3):
        def load_state_dict(self, *a, **k):  # type: ignore[override]
            return None

    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    reference = _NoLoad("x", ["2048"], feature_extractor_weights_path=str(empty))  # random weights, eval mode
    weights = tmp_path / "random-inception.pth"
    torch.save(reference.state_dict(), weights)
    bb = build_backbone("inception", weights=str(weights))
    imgs = random_images(2, size=40)
    feats = bb(imgs)
    assert feats.shape == (2, 2048) and bb.feature_dim == 2048
    assert bb.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    with torch.no_grad():
        torch.testing.assert_close(feats, reference(imgs)[0], rtol=0, atol=0)  # images passed through untouched


def test_unknown_backbone_is_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        build_backbone("inceptionn")
    assert err.value.key == "metrics.fid.backbone" and "random-test" in str(err.value)
    with pytest.raises(ConfigError, match="metrics.clip"):
        build_backbone("clip")  # needs an encoder


def test_register_backbone_rejects_duplicates() -> None:
    assert {"inception", "random-test", "clip"} <= set(available_backbones())
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("random-test")(lambda **_: RandomTestBackbone())


def test_random_test_backbone_is_seeded_labelled_and_batch_invariant() -> None:
    a, b, c = RandomTestBackbone(seed=0), RandomTestBackbone(seed=0), RandomTestBackbone(seed=1)
    assert isinstance(a, FeatureBackbone) and a.name == "random-test" and "RANDOM" in a.implementation
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    imgs = random_images(9, size=24)
    whole = a(imgs)
    assert whole.shape == (9, a.feature_dim) and whole.dtype == torch.float64
    one_by_one = torch.cat([a(imgs[i:i + 1]) for i in range(9)])
    assert torch.equal(whole, one_by_one)
    with pytest.raises(ValueError, match="uint8"):
        a(imgs.float())
