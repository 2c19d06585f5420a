"""Model catalog and loading: tiny factories, local directories through from_pretrained, clear missing-weights errors."""
from __future__ import annotations

import pytest
import torch

from harness.cli import main
from harness.errors import ConfigError, MissingWeightsError
from harness.models import load_backbone, resolve_model


def test_tiny_factories_are_deterministic_across_builds() -> None:
    a, b = load_backbone("tiny-sd", "cpu"), load_backbone("tiny-sd", "cpu")
    for m1, m2 in ((a.unet, b.unet), (a.vae, b.vae), (a.text_encoder, b.text_encoder)):
        assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
    assert a.fingerprint == b.fingerprint and a.family == "text" and a.resolution == 32


def test_local_directory_loads_through_from_pretrained(tmp_path) -> None:
    from diffusers import DDPMPipeline

    tiny = load_backbone("tiny-unet", "cpu")
    DDPMPipeline(unet=tiny.unet, scheduler=tiny.scheduler).save_pretrained(tmp_path / "ddpm")
    spec = resolve_model(str(tmp_path / "ddpm"))
    assert spec.family == "unconditional"
    loaded = load_backbone(str(tmp_path / "ddpm"), "cpu")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.unet(x, 10).sample, tiny.unet(x, 10).sample, rtol=1e-5, atol=1e-6)


def test_fingerprint_follows_the_weights_not_only_the_configs(tmp_path) -> None:
    from diffusers import DDPMPipeline

    from harness.models import model_fingerprint

    tiny = load_backbone("tiny-unet", "cpu")
    directory = tmp_path / "ddpm"
    DDPMPipeline(unet=tiny.unet, scheduler=tiny.scheduler).save_pretrained(directory)
    spec = resolve_model(str(directory))
    configs = {p: p.read_bytes() for p in directory.rglob("*.json")}
    before = model_fingerprint(spec)
    assert model_fingerprint(spec) == before  # deterministic
    with torch.no_grad():
        next(tiny.unet.parameters()).add_(1e-3)  # "retrained": same architecture, other weights
    DDPMPipeline(unet=tiny.unet, scheduler=tiny.scheduler).save_pretrained(directory)
    assert {p: p.read_bytes() for p in directory.rglob("*.json")} == configs
    assert model_fingerprint(spec) != before


def test_missing_hub_weights_name_the_model_and_the_remedy() -> None:
    with pytest.raises(MissingWeightsError) as err:
        load_backbone("sd21-base", "cpu")
    text = str(err.value)
    assert "stabilityai/stable-diffusion-2-1-base" in text and "huggingface-cli download" in text


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="tiny-sd"):
        resolve_model("tiny-sdd")


def test_list_commands_run(capsys) -> None:
    for cmd in ("methods", "suites", "models"):
        assert main([cmd]) == 0
    out = capsys.readouterr().out
    assert "random-direction" in out and "hspace_paper" in out and "sd21-base" in out


@pytest.mark.slow
@pytest.mark.parametrize("name,params", [("arch-sd21-base", 865.9e6), ("arch-ddpm-256", 113.7e6)])
def test_architecture_presets_match_the_real_models_size(name, params) -> None:
    unet = load_backbone(name, "cpu").unet
    n = sum(p.numel() for p in unet.parameters())
    assert abs(n - params) / params < 0.01, n
