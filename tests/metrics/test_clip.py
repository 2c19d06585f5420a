"""CLIP scorer against 100·cos computed directly from tiny random open_clip / transformers models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.errors import ConfigError, MissingWeightsError
from metrics.backbones import build_backbone
from metrics.clip import (
    TABLE_I_PROMPTS, CallableCLIPScorer, ZeroShotAttributeScorer, aggregate_clip_score, load_clip_scorer,
    register_clip_model, tensor_feat_clip_class, zero_shot_attribute_score,
)
from tests.metrics.helpers import random_images

TEXTS = ["a photo of a smiling person", "an old man", "a person wearing a hat"]


def test_open_clip_score_equals_direct_cosine(tiny_open_clip_config: Path) -> None:
    import open_clip

    scorer = load_clip_scorer("open_clip", "tiny-clip-test", model_config=str(tiny_open_clip_config),
                              random_weights=True, seed=3)
    imgs = random_images(3, size=48, seed=4)
    got = scorer.clip_scores(imgs, TEXTS)

    # Reference: the same seeded model, open_clip's own preprocess on PIL images and its tokenizer.
    torch.manual_seed(3)
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip-test", pretrained=None)
    model.eval()
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in imgs]
    with torch.no_grad():
        fi = model.encode_image(torch.stack([preprocess(p) for p in pil])).double()
        ft = model.encode_text(open_clip.get_tokenizer("tiny-clip-test")(TEXTS)).double()
    expected = 100 * torch.nn.functional.cosine_similarity(fi, ft, dim=-1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert scorer.encode_images(imgs).norm(dim=-1).allclose(torch.ones(3))
    assert "RANDOM" in scorer.resize and scorer.embed_dim == 16


def test_transformers_score_equals_direct_cosine_and_torchmetrics(tiny_hf_clip_dir: Path) -> None:
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    scorer = load_clip_scorer("transformers", str(tiny_hf_clip_dir))
    imgs = random_images(3, size=40, seed=5)
    got = scorer.clip_scores(imgs, TEXTS)

    model = CLIPModel.from_pretrained(tiny_hf_clip_dir, local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(tiny_hf_clip_dir, local_files_only=True)
    with torch.no_grad():
        fi = model.get_image_features(**proc(images=list(imgs), return_tensors="pt")).pooler_output.double()
        ft = model.get_text_features(**proc(text=TEXTS, return_tensors="pt", padding=True)).pooler_output.double()
    torch.testing.assert_close(got, 100 * torch.nn.functional.cosine_similarity(fi, ft, dim=-1),
                               rtol=1e-5, atol=1e-5)

    cls = tensor_feat_clip_class()
    tm = CLIPScore(model_name_or_path=lambda: (cls.from_pretrained(tiny_hf_clip_dir, local_files_only=True),
                                               CLIPProcessor.from_pretrained(tiny_hf_clip_dir, local_files_only=True)))
    tm.update(list(imgs), TEXTS)
    assert aggregate_clip_score(got) == pytest.approx(float(tm.compute()), abs=1e-4)


def test_aggregate_clamps_the_mean_not_the_samples() -> None:
    assert aggregate_clip_score([30.0, -10.0]) == pytest.approx(10.0)
    assert aggregate_clip_score([5.0, -10.0]) == 0.0


def test_zero_shot_score_is_two_way_softmax() -> None:
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    pos, neg = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])  # unnormalised on purpose
    s = zero_shot_attribute_score(img, pos, neg, logit_scale=10.0)
    # cos: image 0 -> (1, 0); image 1 -> (0.6, 0.8). softmax([a, b])[0] = 1 / (1 + exp(b - a)).
    expected = torch.tensor([1 / (1 + np.exp(10 * (0 - 1))), 1 / (1 + np.exp(10 * (0.8 - 0.6)))], dtype=torch.float64)
    torch.testing.assert_close(s, expected)


def test_zero_shot_attribute_scorer_uses_prompt_pairs(tiny_open_clip_config: Path) -> None:
    scorer = load_clip_scorer("open_clip", "tiny-clip-test", model_config=str(tiny_open_clip_config),
                              random_weights=True)
    zs = ZeroShotAttributeScorer(scorer, TABLE_I_PROMPTS)
    imgs = random_images(2, size=32)
    out = zs(imgs)
    assert set(out) == set(TABLE_I_PROMPTS)
    img = scorer.encode_images(imgs)
    pos, neg = scorer.encode_texts(["An old person", "A young person"])
    torch.testing.assert_close(out["age"], zero_shot_attribute_score(img, pos, neg, 100.0))


def test_missing_clip_weights_and_bad_config(tmp_path: Path, tiny_open_clip_config: Path) -> None:
    with pytest.raises(MissingWeightsError) as err:
        load_clip_scorer("transformers", str(tmp_path / "clip-vit-b32"))
    assert err.value.key == "metrics.clip.model" and "clip-vit-b32" in str(err.value)
    with pytest.raises(MissingWeightsError) as err:
        load_clip_scorer("open_clip", "ViT-B-32", pretrained=str(tmp_path / "vit-b-32.bin"))
    assert "ViT-B-32" in str(err.value) and "metrics.clip" in str(err.value)
    with pytest.raises(MissingWeightsError):
        load_clip_scorer("open_clip", "ViT-B-32", pretrained="openai")  # a hub tag would download
    with pytest.raises(ConfigError, match="metrics.clip.backend"):
        load_clip_scorer("clip-as-a-service", "x")
    with pytest.raises(ConfigError, match="metrics.clip.model"):
        load_clip_scorer("registered", "no-such-model")


W = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4)


def _image_fn(x: torch.Tensor) -> torch.Tensor:
    return x.double().mean(dim=(2, 3)) @ W  # (N, 3) channel means -> (N, 4)


def _text_fn(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[len(t), 1.0, -2.0, 0.5] for t in texts], dtype=torch.float64)


@register_clip_model("test-embedded-clip")
def _embedded(device: str = "cpu", seed: int = 0) -> CallableCLIPScorer:
    return CallableCLIPScorer("test-embedded-clip", _image_fn, _text_fn, 4, "sha-of-project-clip", "none")


def test_registered_embedded_clip_scores_and_serves_as_fid_backbone() -> None:
    scorer = load_clip_scorer("registered", "test-embedded-clip")
    imgs = random_images(3, size=8, seed=9)
    fi, ft = _image_fn(imgs).numpy(), _text_fn(TEXTS).numpy()
    expected = 100 * (fi * ft).sum(1) / np.linalg.norm(fi, axis=1) / np.linalg.norm(ft, axis=1)
    np.testing.assert_allclose(scorer.clip_scores(imgs, TEXTS).numpy(), expected, rtol=1e-5)
    bb = build_backbone("clip", clip_encoder=scorer)
    assert (bb.name, bb.feature_dim, bb.weights_sha256) == ("clip:test-embedded-clip", 4, "sha-of-project-clip")
    np.testing.assert_allclose(bb(imgs).numpy(), fi, rtol=1e-6)  # unnormalised embeddings, as FD_CLIP uses
