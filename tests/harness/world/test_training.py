"""World model training scripts (a few steps into tmp dirs, outputs reload exactly) and check.py's helpers."""

import json
import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness.world import FACTOR_NAMES, FACTOR_VALUES, OracleResult, render_batch, sample_scenes
from harness.world import check
from harness.world.render import split_combinations
from harness.world.train_clip import counterfactual_batch, make_captions, match_matrix, scene_attrs
from harness.world.train_ddpm import SAMPLE_ETA

TINY_CLIP = ["--vision-width", "32", "--vision-layers", "1", "--vision-heads", "1", "--text-width", "32",
             "--text-layers", "1", "--projection-dim", "16", "--batch-size", "16", "--eval-samples", "24",
             "--max-steps", "2", "--save-every", "1", "--minutes", "5"]


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    from harness.world import train_clip

    out = tmp_path_factory.mktemp("world-clip")
    model = train_clip.main(["--out", str(out), *TINY_CLIP])
    return out, model.eval()


@pytest.fixture(scope="module")
def text2img_run(tmp_path_factory, clip_run):
    from harness.world import train_text2img

    out = tmp_path_factory.mktemp("world-text2img")
    unet, text_encoder, tokenizer = train_text2img.main([
        "--clip", str(clip_run[0]), "--out", str(out), "--max-steps", "2", "--batch-size", "4",
        "--save-every", "2", "--samples", "4", "--sample-steps", "2"])
    return out, unet.eval(), text_encoder, tokenizer


def test_clip_checkpoint_reloads_identically(clip_run):
    from transformers import CLIPModel, CLIPProcessor

    out, model = clip_run
    reloaded = CLIPModel.from_pretrained(out, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(out, local_files_only=True)
    images = render_batch(sample_scenes(4, seed=1, split="heldout"), 32)
    texts = ["a red shape", "a small circle on a blue background, top left"]
    # the saved processor reproduces the training-time preprocessing
    inputs = processor(text=texts, images=list(images), return_tensors="pt", padding=True, truncation=True)
    from harness.world.train_clip import pixel_values

    assert torch.allclose(inputs["pixel_values"], pixel_values(images), atol=1e-5)
    with torch.no_grad():
        a, b = model(**inputs), reloaded(**inputs)
    assert torch.equal(a.logits_per_image, b.logits_per_image)
    assert reloaded.config.text_config.vocab_size == 49408
    assert reloaded.config.text_config.max_position_embeddings == 77
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and set(metrics["zero_shot_accuracy"]) >= {"shape", "fg"}
    assert all(0.0 <= v <= 1.0 for v in metrics["zero_shot_accuracy"].values())
    assert (out / "loss.csv").read_text().count("\n") == 3


def test_partial_captions_and_match_matrix():
    scenes = sample_scenes(40, seed=5)
    texts, named = make_captions(scenes, np.random.default_rng(0), partial_prob=0.5)
    m = match_matrix(named, scenes).numpy()
    assert np.all(np.diag(m) == 1)  # every caption fits its own image
    for i, sub in enumerate(named):
        for j, scene in enumerate(scenes):
            assert m[i, j] == all(scene_attrs(scene)[k] == v for k, v in sub.items())
    assert any(len(sub) < 5 for sub in named) and any(len(sub) == 5 for sub in named)


def test_counterfactual_batches_stay_in_the_train_split():
    scenes = counterfactual_batch(60, seed=3, group_size=4)
    train = set(split_combinations("train"))
    assert len(scenes) == 60 and all(s.key() in train for s in scenes)
    for g in range(0, 60, 4):
        base = scenes[g].factors()
        for s in scenes[g + 1:g + 4]:  # each variant changes one factor (x and y count as one, position)
            changed = {k for k, v in s.factors().items() if v != base[k]}
            assert len(changed - {"x", "y"}) + bool(changed & {"x", "y"}) <= 1


def test_text2img_checkpoint_reloads_identically(text2img_run, clip_run):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    from harness.models import _detect_family
    from harness.world.train_text2img import encode_prompts

    out, unet, text_encoder, tokenizer = text2img_run
    unet2 = UNet2DConditionModel.from_pretrained(out, subfolder="unet", local_files_only=True).eval()
    te2 = CLIPTextModel.from_pretrained(out, subfolder="text_encoder", local_files_only=True).eval()
    tok2 = CLIPTokenizer.from_pretrained(out, subfolder="tokenizer", local_files_only=True)
    prompts = ["a small red circle on a blue background, top left", ""]
    assert tok2(prompts, padding="max_length", max_length=77).input_ids == \
        tokenizer(prompts, padding="max_length", max_length=77).input_ids
    ctx = encode_prompts(text_encoder, tokenizer, prompts)
    assert ctx.shape == (2, 77, unet.config.cross_attention_dim)
    assert torch.equal(ctx, encode_prompts(te2, tok2, prompts))
    # the text encoder is the CLIP's text tower, unchanged
    clip = CLIPModel.from_pretrained(clip_run[0], local_files_only=True).eval()
    ids = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(clip.text_model(ids).last_hidden_state, ctx)
        x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 900])
        assert torch.equal(unet(x, t, encoder_hidden_states=ctx).sample, unet2(x, t, encoder_hidden_states=ctx).sample)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["vae"] == [None, None]
    assert _detect_family(out) == "text"
    assert {p.name for p in out.iterdir()} >= {"unet", "scheduler", "text_encoder", "tokenizer", "loss.csv",
                                                 "samples.png", "training.json"}
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 15e6


@pytest.mark.parametrize("flag,value", [("--ddpm-steps", "1000"), ("--text-steps", "0")])
def test_check_rejects_step_counts_the_scheduler_cannot_index(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        check.main([flag, value])
    assert exc.value.code == 2
    assert f"{flag} {value}" in capsys.readouterr().err


def test_max_sampling_steps_is_the_schedulers_bound():
    from diffusers import UNet2DModel

    from harness.world._training import MAX_SAMPLING_STEPS, build_scheduler
    from harness.world.train_ddpm import sample

    torch.manual_seed(0)
    tiny = UNet2DModel(sample_size=8, block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    assert sample(tiny, build_scheduler(), 1, MAX_SAMPLING_STEPS).shape == (1, 8, 8, 3)
    with pytest.raises(IndexError):
        sample(tiny, build_scheduler(), 1, MAX_SAMPLING_STEPS + 1)


def test_check_end_to_end_on_tiny_checkpoints(tmp_path, clip_run, text2img_run):
    from harness.world.train_ddpm import build_scheduler, build_unet, save

    torch.manual_seed(0)
    save(tmp_path / "ddpm", build_unet(32), build_scheduler())
    res = check.main(["--clip", str(clip_run[0]), "--ddpm", str(tmp_path / "ddpm"), "--text2img",
                      str(text2img_run[0]), "--n-clip", "20", "--n-ref", "40", "--n-uncond", "6",
                      "--n-text", "4", "--ddpm-steps", "2", "--text-steps", "2", "--json", str(tmp_path / "r.json")])
    assert set(res) == {"world", "clip_zero_shot", "uncond", "text", "fid"} and res["world"] == "shapes"
    assert set(res["uncond"]["tv"]) == set(FACTOR_NAMES)
    assert (res["uncond"]["steps"], res["uncond"]["eta"]) == (2, SAMPLE_ETA)
    assert (res["text"]["steps"], res["text"]["eta"]) == (2, 0.0)
    assert all(math.isfinite(v) for v in res["fid"].values())
    assert json.loads((tmp_path / "r.json").read_text()) == res


def test_faces_check_prints_every_bar_with_a_verdict(tmp_path, capsys):
    """`harness world check --world faces` on tiny faces checkpoints: every bar of issue 15 with PASS/FAIL."""
    from harness.world import train_clip, train_text2img
    from harness.world.faces.factors import ATTRIBUTES
    from harness.world.train_ddpm import build_scheduler, build_unet, save

    train_clip.main(["--world", "faces", "--out", str(tmp_path / "clip"), *TINY_CLIP])
    train_text2img.main(["--world", "faces", "--clip", str(tmp_path / "clip"), "--out", str(tmp_path / "t2i"),
                         "--max-steps", "1", "--batch-size", "2", "--samples", "0"])
    torch.manual_seed(0)
    save(tmp_path / "ddpm", build_unet(32), build_scheduler("v_prediction"))
    capsys.readouterr()
    res = check.main(["--world", "faces", "--clip", str(tmp_path / "clip"), "--ddpm", str(tmp_path / "ddpm"),
                      "--text2img", str(tmp_path / "t2i"), "--n-clip", "12", "--n-ref", "30", "--n-uncond", "3",
                      "--n-text", "3", "--text-steps", "2", "--ddpm-steps", "2"])
    out = capsys.readouterr().out
    assert res["world"] == "faces" and set(res["clip_zero_shot"]) >= set(ATTRIBUTES)
    assert set(res["uncond"]["tv"]) == {"smile", "glasses", "age", "gender", "hat", "skin", "hair", "bg"}
    assert set(res["text"]["rates"]) >= set(ATTRIBUTES)
    lines = {name: next(line for line in out.splitlines() if line.startswith(name)) for name in ("CLIP", "DDPM", "text2img")}
    assert ", ".join(ATTRIBUTES) + " >= 0.95" in lines["CLIP"]
    assert ">= 0.9:" in lines["DDPM"] and "each <= 0.1" in lines["DDPM"] and "eta 0" in lines["DDPM"]
    assert all(f"prompted-{a}" in lines["text2img"] for a in ATTRIBUTES) and "each >= 0.9" in lines["text2img"]
    assert out.count("< 0.2:") == 2
    verdicts = out.count("PASS") + out.count("FAIL")
    assert verdicts == 6, out  # zero-shot, validity, TV, prompted, FID for both models
    # a random DDPM is judged, not waved through
    assert "FAIL" in lines["DDPM"]


# ----------------------------------------------------------------------------- check.py helpers

def test_tv_distance_closed_form():
    assert check.tv_distance({"a": 1.0}, {"b": 1.0}) == 1.0
    assert check.tv_distance({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}) == 0.0
    assert check.tv_distance({"a": 0.7, "b": 0.3}, {"a": 0.2, "b": 0.3, "c": 0.5}) == pytest.approx(0.5)
    assert check.empirical_distribution(["x", "y", "x", "x"], ("x", "y", "z")) == {"x": 0.75, "y": 0.25, "z": 0.0}


def test_training_marginals_and_factor_tv():
    marg = check.training_marginals()
    combos = split_combinations("train")
    for name in FACTOR_NAMES:
        assert sum(marg[name].values()) == pytest.approx(1.0)
        assert set(marg[name]) == set(FACTOR_VALUES[name])
    n_red_fg = sum(c[1] == "red" for c in combos)
    assert marg["fg"]["red"] == pytest.approx(n_red_fg / len(combos))
    # every valid reading is a red large circle at top left on blue; invalid readings are ignored
    one = OracleResult(True, shape="circle", fg="red", bg="blue", size="large", x="left", y="top")
    tv = check.factor_tv([one, one, OracleResult(False, "no object")])
    for name in FACTOR_NAMES:
        assert tv[name] == pytest.approx(1.0 - marg[name][getattr(one, name)])


def test_frechet_distance_closed_form():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert check.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[1.0]])) \
        == pytest.approx(9.0 + 1.0)
    # diagonal covariances: ||mu||^2 + sum (sqrt a - sqrt b)^2
    a, b = np.array([1.0, 9.0, 0.25]), np.array([4.0, 1.0, 0.25])
    mu = np.array([0.5, 0.0, -1.0])
    assert check.frechet_distance(mu, np.diag(a), np.zeros(3), np.diag(b)) == \
        pytest.approx(1.25 + 1.0 + 4.0 + 0.0)
    # commuting non-diagonal pair: same orthogonal eigenbasis
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    assert check.frechet_distance(np.zeros(3), q @ np.diag(a) @ q.T, np.zeros(3), q @ np.diag(b) @ q.T) == \
        pytest.approx(5.0)


def test_fid_from_features_hand_computed():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 4))
    assert abs(check.fid_from_features(x, x)) < 1e-9
    # a pure shift by c changes only the mean term: FID = ||c||^2
    c = np.array([1.0, -2.0, 0.5, 0.0])
    assert check.fid_from_features(x + c, x) == pytest.approx(float(c @ c), abs=1e-9)
    # scaling by s: tr((s-1)^2 S) on the sample covariance
    s = 3.0
    assert check.fid_from_features(s * x, x) == pytest.approx(
        (s - 1) ** 2 * np.trace(np.cov(x, rowvar=False)) + ((s - 1) ** 2) * float(x.mean(0) @ x.mean(0)))


def test_pixel_shuffle_keeps_colours_loses_layout():
    images = render_batch(sample_scenes(5, seed=2, split="heldout"), 32)
    shuffled = check.pixel_shuffle(images, seed=0)
    assert shuffled.shape == images.shape and shuffled.dtype == np.uint8
    for a, b in zip(images, shuffled):
        key = lambda im: np.sort(im.reshape(-1, 3).view([("r", "u1"), ("g", "u1"), ("b", "u1")]), axis=0)  # noqa
        assert np.array_equal(key(a), key(b))
        assert not np.array_equal(a, b)
    assert np.array_equal(shuffled, check.pixel_shuffle(images, seed=0))


# ----------------------------------------------------------------------------- prediction targets

@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_training_target_is_what_the_harness_sampler_converts_back_to_noise(prediction):
    """A UNet that outputs the exact training target makes predict_eps return the exact noise."""
    from types import SimpleNamespace

    from harness.diffusion.sampler import predict_eps
    from harness.world._training import build_scheduler, noised_and_target

    scheduler = build_scheduler(prediction)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, torch.randn(2, 3, 8, 8, generator=g)
    t = 700
    x_t, target = noised_and_target(x0, noise, scheduler.alphas_cumprod[t], prediction)
    a = scheduler.alphas_cumprod[t]
    # closed forms: x0 is recoverable from (x_t, target) for either parameterisation
    if prediction == "v_prediction":
        torch.testing.assert_close(a.sqrt() * x_t - (1 - a).sqrt() * target, x0)
    else:
        torch.testing.assert_close(target, noise)

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t):
            return SimpleNamespace(sample=target + 0 * self.w)

    backbone = SimpleNamespace(name="oracle-unet", unet=Oracle(), scheduler=scheduler, dtype=torch.float32,
                               compiled_unet=None)
    torch.testing.assert_close(predict_eps(backbone, x_t, t, None), noise, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_schedule_matches_closed_form(schedule):
    from types import SimpleNamespace

    from harness.world._training import rates

    args = SimpleNamespace(lr=1e-3, warmup=10, start_step=500, max_steps=1000, lr_schedule=schedule,
                           ema=0.998, resume=True)
    for done in (0, 4, 9, 10, 250, 500, 999, 1000):
        warm = min(1.0, (done + 1) / 10)
        decay = 0.5 * (1 + math.cos(math.pi * done / 1000)) if schedule == "cosine" else 1.0
        lr, ema = rates(args, 500 + done)
        assert lr == pytest.approx(1e-3 * warm * decay, abs=1e-15)
        assert ema == 0.998
    if schedule == "cosine":
        assert rates(args, 1500)[0] == pytest.approx(0.0, abs=1e-15)
        assert rates(args, 1000)[0] == pytest.approx(0.5e-3)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_unconditional_sampler_matches_diffusers_ddim_pipeline(tmp_path, eta):
    from diffusers import DDIMPipeline, UNet2DModel

    from harness.world.train_ddpm import build_scheduler, build_unet, save

    torch.manual_seed(0)
    save(tmp_path / "ddpm", build_unet(32), build_scheduler("v_prediction"))
    ours = check.sample_unconditional(tmp_path / "ddpm", 3, 4, seed=7, eta=eta)
    unet = UNet2DModel.from_pretrained(tmp_path / "ddpm", subfolder="unet").eval()
    pipe = DDIMPipeline(unet=unet, scheduler=check._ddim(tmp_path / "ddpm"))
    ref = pipe(batch_size=3, generator=torch.Generator().manual_seed(7), eta=eta, num_inference_steps=4,
               output_type="np").images
    assert ours.shape == ref.shape == (3, 32, 32, 3)
    assert np.abs(ours / 255.0 - ref).max() <= 1 / 255 + 1e-6
    if eta:
        assert not np.array_equal(ours, check.sample_unconditional(tmp_path / "ddpm", 3, 4, seed=7, eta=0.0))


def test_focus_weights_and_weighted_mse_against_a_by_hand_loss() -> None:
    """--focus-box/--focus-weight: the box's pixels (centres inside) weigh w, the rest 1; the loss is the
    weighted mean normalised by the mean weight, F.mse_loss itself without a box."""
    import torch.nn.functional as F

    from harness.world.train_ddpm import pixel_weights, weighted_mse

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn((2, 3, 8, 8), generator=g), torch.randn((2, 3, 8, 8), generator=g)
    assert torch.allclose(weighted_mse(pred, target, pixel_weights(8, None, 4.0)), F.mse_loss(pred, target))
    w = pixel_weights(8, "0.25,0.5,0.0,0.25", 3.0)
    # pixel centres (i + 0.5) / 8 inside [0.25, 0.5] x [0, 0.25]: columns 2, 3 and rows 0, 1
    expected_w = torch.ones((8, 8))
    expected_w[0:2, 2:4] = 3.0
    assert torch.equal(w[0, 0], expected_w)
    err = (pred - target) ** 2
    by_hand = sum(float(err[b, c, i, j]) * float(expected_w[i, j]) for b in range(2) for c in range(3)
                  for i in range(8) for j in range(8)) / float(expected_w.sum() * 6)
    assert abs(float(weighted_mse(pred, target, w)) - by_hand) < 1e-5
