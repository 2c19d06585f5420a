"""The metrics stage end to end on a synthetic run of PNGs, with random-weight models."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from harness.errors import ConfigError, MissingWeightsError
from metrics import clip as clip_mod
from metrics.backbones import RandomTestBackbone
from metrics.config import MetricsConfig
from metrics.fid_stage import build_fid_backbone, fid_rows, group_feature_stats, merge_group_stats
from metrics.lpips_metric import LPIPSMetric
from metrics.stage import compute_metrics
from tests.metrics.helpers import make_run, random_images, write_png

PROVENANCE = ["implementation", "library_version", "backbone", "weights_sha256", "resize", "reference_hash"]


def _config(oc_json: Path, **fid: object) -> MetricsConfig:
    return MetricsConfig.from_dict({
        "device": "cpu",
        "fid": {"backbone": "random-test", "feature_dim": 8, "batch_size": 16, **fid},
        "clip": {"backend": "open_clip", "model": "tiny-clip-test", "model_config": str(oc_json),
                 "random_weights": True, "batch_size": 5},
        "lpips": {"net": "squeeze", "random_backbone": True, "batch_size": 4},
    })


@pytest.fixture(scope="module")
def run_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    d = tmp_path_factory.mktemp("run")
    return d, make_run(d)


def _fresh(template: tuple[Path, pd.DataFrame], dst: Path) -> tuple[Path, pd.DataFrame]:
    shutil.copytree(template[0], dst)
    return dst, template[1]


def _load(run_dir: Path, rels: list[str]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(Image.open(run_dir / r))).permute(2, 0, 1) for r in rels])


class _Features(nn.Module):
    """torchmetrics extractor wrapping the random test backbone (float64 out)."""

    def __init__(self) -> None:
        super().__init__()
        self.bb = RandomTestBackbone(seed=0, feature_dim=8)
        self.num_features = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bb(x)


def _torchmetrics_fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    tm = FrechetInceptionDistance(feature=_Features())
    tm.update(real, real=True)
    tm.update(fake, real=False)
    return float(tm.compute())


def test_stage_values_match_references(run_template, tmp_path: Path, tiny_open_clip_config: Path) -> None:
    import open_clip

    run_dir, rows = _fresh(run_template, tmp_path / "run")
    per, agg = compute_metrics(rows, run_dir, _config(tiny_open_clip_config))
    done = rows[rows.status == "done"].sort_values("unit_key")
    assert set(per.metric) == {"clip_score", "lpips"} and len(per) == 2 * len(done)

    # CLIP: 100·cos from the open_clip model itself, text = target prompt or the prompt when empty
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip-test", pretrained=None)
    texts = [t or p for t, p in zip(done.target_prompt, done.prompt)]
    with torch.no_grad():
        fi = model.eval().encode_image(torch.stack([preprocess(Image.open(run_dir / r)) for r in done.edited_path]))
        ft = model.encode_text(open_clip.get_tokenizer("tiny-clip-test")(texts))
    expected = 100 * torch.nn.functional.cosine_similarity(fi.double(), ft.double(), dim=-1).numpy()
    got = per[per.metric == "clip_score"].set_index("unit_key").loc[done.unit_key, "value"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)

    # FID per group: torchmetrics on the PNG-read originals (real) and edits (fake)
    fid = agg[agg.metric == "fid"]
    assert len(fid) == 4
    for r in fid.to_dict("records"):
        g = done[(done.method == r["method"]) & (done.attribute == r["attribute"])]
        expected_fid = _torchmetrics_fid(_load(run_dir, list(g.original_path)), _load(run_dir, list(g.edited_path)))
        assert r["value"] == pytest.approx(expected_fid, rel=1e-9)
        assert (r["n"], r["n_ref"], r["n_failed"], r["warning"]) == (11, 11, 1, "")
    # provenance on every aggregate row of an image metric; the clip mean is clamped at 0
    img_aggs = agg[agg.metric.isin(["fid", "clip_score", "lpips"])]
    assert img_aggs[PROVENANCE].notna().all().all() and (img_aggs["backbone"] != "").all()
    assert fid.reference_hash.nunique() == 1  # all groups share the same originals (same seeds)
    clip_agg = agg[agg.metric == "clip_score"].iloc[0]
    g = per[(per.metric == "clip_score") & (per.method == clip_agg.method) & (per.attribute == clip_agg.attribute)]
    assert clip_agg.value == pytest.approx(max(g.value.mean(), 0.0))
    assert set(agg[agg.metric == "edit_seconds_mean"].method) == {"m1", "m2"}


def test_fid_identical_for_batch_sizes_and_shards(run_template, tmp_path: Path, tiny_open_clip_config: Path) -> None:
    values = {}
    for bs in (1, 7, 64):
        run_dir, rows = _fresh(run_template, tmp_path / f"bs{bs}")
        cfg = _config(tiny_open_clip_config, batch_size=bs)
        cfg = MetricsConfig.from_dict({**cfg.to_dict(), "clip": {"enabled": False}, "lpips": {"enabled": False}})
        _, agg = compute_metrics(rows, run_dir, cfg)
        values[bs] = agg[agg.metric == "fid"].set_index(["method", "attribute"]).value
    assert values[1].equals(values[7]) and values[1].equals(values[64])  # bit-identical

    # three shards on three workers (separate caches), statistics merged by addition
    cfg = _config(tiny_open_clip_config, batch_size=7)
    bb = build_fid_backbone(cfg)
    rows = run_template[1]
    shards = [rows.iloc[i::3] for i in range(3)]
    parts = [group_feature_stats(s, _fresh(run_template, tmp_path / f"shard{i}")[0], cfg, bb)
             for i, s in enumerate(shards)]
    merged = fid_rows(merge_group_stats(*parts), bb, folder=None).set_index(["method", "attribute"])
    np.testing.assert_allclose(merged.value.loc[values[1].index], values[1], rtol=1e-10, atol=0)
    assert (merged.n == 11).all()


def test_second_call_does_no_backbone_work(run_template, tmp_path: Path, tiny_open_clip_config: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"fid": 0, "clip_img": 0, "clip_txt": 0, "lpips": 0}

    def counting(cls, name, key):
        orig = getattr(cls, name)

        def wrapper(self, *a, **k):
            calls[key] += int(a[0].shape[0]) if torch.is_tensor(a[0]) else len(a[0])
            return orig(self, *a, **k)
        monkeypatch.setattr(cls, name, wrapper)

    counting(RandomTestBackbone, "__call__", "fid")
    counting(clip_mod.OpenClipScorer, "_image_features", "clip_img")
    counting(clip_mod.OpenClipScorer, "_text_features", "clip_txt")
    counting(LPIPSMetric, "__call__", "lpips")
    run_dir, rows = _fresh(run_template, tmp_path / "run")
    cfg = _config(tiny_open_clip_config)
    per1, agg1 = compute_metrics(rows, run_dir, cfg)
    # 44 done edits + the 11 distinct originals they use (the failed units share originals 11, unused)
    assert calls == {"fid": 44 + 11, "clip_img": 44, "clip_txt": 44, "lpips": 44}

    calls.update(dict.fromkeys(calls, 0))
    per2, agg2 = compute_metrics(rows, run_dir, cfg)
    assert calls == dict.fromkeys(calls, 0)
    pd.testing.assert_frame_equal(per1, per2)
    pd.testing.assert_frame_equal(agg1, agg2)

    # a rewritten edit is recomputed (its content hash changed); nothing else is
    write_png(run_dir / rows.edited_path.iloc[0], random_images(1, seed=99)[0])
    compute_metrics(rows, run_dir, cfg)
    assert calls == {"fid": 1, "clip_img": 1, "clip_txt": 1, "lpips": 1}


def test_reference_folder(run_template, tmp_path: Path, tiny_open_clip_config: Path) -> None:
    run_dir, rows = _fresh(run_template, tmp_path / "run")
    ref_dir = tmp_path / "ref"
    ref = random_images(15, seed=7)
    for i in range(15):
        write_png(ref_dir / f"sub/{i:02d}.png", ref[i])
    base = _config(tiny_open_clip_config).to_dict()
    cfg = MetricsConfig.from_dict({**base, "fid": {**base["fid"], "reference": "folder", "kid": True,
                                                   "kid_subset_size": 8, "kid_subsets": 5},
                                   "clip": {"enabled": False}, "lpips": {"enabled": False}})
    _, agg = compute_metrics(rows, run_dir, cfg, reference_dir=ref_dir)
    done = rows[rows.status == "done"]
    fid = agg[agg.metric == "fid"]
    for r in fid.to_dict("records"):
        g = done[(done.method == r["method"]) & (done.attribute == r["attribute"])].sort_values("unit_key")
        assert r["value"] == pytest.approx(_torchmetrics_fid(ref, _load(run_dir, list(g.edited_path))), rel=1e-9)
        assert r["n_ref"] == 15
    assert agg[agg.metric == "kid"].value.notna().all() and len(agg[agg.metric == "kid"]) == 4
    with pytest.raises(ConfigError, match="metrics.fid.reference"):
        compute_metrics(rows, run_dir, cfg)  # folder mode without a folder


def test_disentanglement_in_stage(run_template, tmp_path: Path, tiny_open_clip_config: Path) -> None:
    run_dir, rows = _fresh(run_template, tmp_path / "run")
    base = _config(tiny_open_clip_config).to_dict()
    prompts = {"smile": ["A smiling person", "A person"], "age": ["An old person", "A young person"]}
    cfg = MetricsConfig.from_dict({**base, "fid": {"enabled": False}, "lpips": {"enabled": False},
                                   "clip": {**base["clip"], "enabled": False},
                                   "disentanglement": {"enabled": True, "prompts": prompts}})
    per, agg = compute_metrics(rows, run_dir, cfg)
    d = agg[agg.metric == "disentanglement"]
    assert len(d) == 2 * 2 * 2  # methods x applied edits x measured attributes
    # reference: s_a by hand from the model's normalised features, then mean |Δ| per seed, mean/std over seeds
    scorer = clip_mod.load_clip_scorer("open_clip", "tiny-clip-test", model_config=str(tiny_open_clip_config),
                                       random_weights=True)
    pos, neg = scorer.encode_texts(["An old person", "A young person"])
    g = rows[(rows.status == "done") & (rows.method == "m2") & (rows.attribute == "smile")]

    def s_age(rels: list[str]) -> np.ndarray:
        img = scorer.encode_images(_load(run_dir, rels)).double()
        logits = 100 * torch.stack([img @ v.double() for v in (pos, neg)], -1)
        return torch.softmax(logits, -1)[:, 0].numpy()

    delta = np.abs(s_age(list(g.edited_path)) - s_age(list(g.original_path)))
    per_seed = pd.Series(delta).groupby(g.seed.to_numpy()).mean()
    cell = d[(d.method == "m2") & (d.attribute == "smile") & (d.measured_attribute == "age")].iloc[0]
    assert cell.value == pytest.approx(per_seed.mean(), abs=1e-6)
    assert cell["std"] == pytest.approx(per_seed.std(ddof=1), abs=1e-6)
    assert cell.n_repeats == 3


def test_bad_inputs(run_template, tmp_path: Path, tiny_open_clip_config: Path) -> None:
    run_dir, rows = _fresh(run_template, tmp_path / "run")
    cfg = _config(tiny_open_clip_config)
    with pytest.raises(ValueError, match="lack columns"):
        compute_metrics(rows.drop(columns=["seed"]), run_dir, cfg)
    with pytest.raises(ValueError, match="unique"):
        compute_metrics(pd.concat([rows, rows.iloc[:1]]), run_dir, cfg)
    inception = MetricsConfig.from_dict({**cfg.to_dict(), "fid": {"backbone": "inception",
                                                                  "weights": str(tmp_path / "nope.pth")},
                                         "clip": {"enabled": False}, "lpips": {"enabled": False}})
    with pytest.raises(MissingWeightsError, match="metrics.fid.weights"):
        compute_metrics(rows, run_dir, inception)


def test_bad_files_cost_their_unit_only_with_one_line_each(run_template, tmp_path: Path,
                                                            tiny_open_clip_config: Path) -> None:
    # Issue 17.3: each of these aborted the whole stage with an error naming neither file nor unit.
    from metrics.stage import MetricInputWarning

    run_dir, rows = _fresh(run_template, tmp_path / "run")
    rows = rows.assign(batch_key="b0")
    by_key = rows.set_index("unit_key")
    truncated, rgba, resized, tiny = "m1|smile|001", "m1|smile|002", "m1|age|002", "m2|smile|003"
    edited = run_dir / by_key.loc[truncated, "edited_path"]
    edited.write_bytes(edited.read_bytes()[:200])  # OSError: image file is truncated
    Image.new("RGBA", (32, 32)).save(run_dir / by_key.loc[rgba, "edited_path"])
    write_png(run_dir / by_key.loc[resized, "edited_path"], random_images(1, size=48, seed=9)[0])  # LPIPS ValueError
    small = random_images(2, size=16, seed=8)  # under squeeze's 17 px: its raw RuntimeError
    rows.loc[rows.unit_key == tiny, ["original_path", "edited_path"]] = ["images/small/o.png", "images/small/e.png"]
    write_png(run_dir / "images/small/o.png", small[0])
    write_png(run_dir / "images/small/e.png", small[1])
    ref_dir = tmp_path / "ref"
    for i, im in enumerate(random_images(6, size=64, seed=3)):  # the run's images are 32x32
        write_png(ref_dir / f"{i:02d}.png", im)
    base = _config(tiny_open_clip_config).to_dict()
    cfg = MetricsConfig.from_dict({**base, "fid": {**base["fid"], "reference": "folder"}})

    with pytest.warns(MetricInputWarning) as caught:
        per, agg = compute_metrics(rows, run_dir, cfg, reference_dir=ref_dir)
    lines = [str(w.message) for w in caught]
    assert any(truncated in m and str(edited) in m and "truncated" in m and "shards/b0.parquet" in m for m in lines)
    assert any(rgba in m and "RGB" in m for m in lines)
    assert any(resized in m and "48x48" in m and "lpips" in m for m in lines)
    assert any(tiny in m and "17 px" in m and "clip-features" in m for m in lines)
    assert len(lines) == 4  # one line each
    done = set(rows.loc[rows.status == "done", "unit_key"])
    assert set(per[per.metric == "clip_score"].unit_key) == done - {truncated, rgba}
    assert set(per[per.metric == "lpips"].unit_key) == done - {truncated, rgba, resized, tiny}
    group = agg[(agg.metric == "lpips") & (agg.method == "m1") & (agg.attribute == "smile")].iloc[0]
    assert truncated in group.warning and rgba in group.warning and group.n == len(
        [u for u in done if u.startswith("m1|smile")]) - 2
    fid = agg[agg.metric == "fid"]
    assert fid.value.notna().all() and fid.warning.str.contains("reference folder .* is 64x64 but the run's images "
                                                                "are [0-9x, ]*: .*resize", regex=True).all()


def test_reference_folder_skips_unreadable_and_wrongly_sized_files(run_template, tmp_path: Path,
                                                                   tiny_open_clip_config: Path) -> None:
    run_dir, rows = _fresh(run_template, tmp_path / "run")
    ref_dir = tmp_path / "ref"
    ref = random_images(6, seed=3)
    for i in range(6):
        write_png(ref_dir / f"{i:02d}.png", ref[i])
    (ref_dir / "broken.png").write_bytes((ref_dir / "00.png").read_bytes()[:40])
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(ref_dir / "big.png")  # the others are 32x32
    base = _config(tiny_open_clip_config).to_dict()
    cfg = MetricsConfig.from_dict({**base, "fid": {**base["fid"], "reference": "folder"},
                                   "clip": {"enabled": False}, "lpips": {"enabled": False}})
    _, agg = compute_metrics(rows, run_dir, cfg, reference_dir=ref_dir)
    fid = agg[agg.metric == "fid"]
    done = rows[rows.status == "done"]
    for r in fid.to_dict("records"):
        assert r["n_ref"] == 6 and "broken.png (unreadable" in r["warning"] and "big.png (size" in r["warning"]
        g = done[(done.method == r["method"]) & (done.attribute == r["attribute"])].sort_values("unit_key")
        assert r["value"] == pytest.approx(_torchmetrics_fid(ref, _load(run_dir, list(g.edited_path))), rel=1e-7)  # FID near 0 here: float64 summation order shows at 1e-9


def test_clip_feature_lpips_in_stage_uses_the_clip_model_and_is_labelled(run_template, tmp_path: Path,
                                                                         tiny_hf_clip_dir: Path) -> None:
    from metrics.lpips_metric import ClipFeatureLPIPS
    from metrics.clip import load_clip_scorer

    run_dir, rows = _fresh(run_template, tmp_path / "run")
    cfg = MetricsConfig.from_dict({"device": "cpu", "fid": {"enabled": False}, "clip": {
        "enabled": False, "backend": "transformers", "model": str(tiny_hf_clip_dir)},
        "lpips": {"backbone": "clip-features", "batch_size": 3}})
    per, agg = compute_metrics(rows, run_dir, cfg)
    assert set(per.metric) == {"lpips"}  # CLIP score off, its model still built for the LPIPS stand-in
    done = rows[rows.status == "done"].sort_values("unit_key")
    direct = ClipFeatureLPIPS(load_clip_scorer("transformers", str(tiny_hf_clip_dir)))(
        _load(run_dir, list(done.edited_path)), _load(run_dir, list(done.original_path)))
    got = per.set_index("unit_key").loc[done.unit_key, "value"].to_numpy()
    np.testing.assert_allclose(got, direct.numpy(), rtol=1e-9)
    lp = agg[agg.metric == "lpips"]
    assert len(lp) and lp.backbone.str.startswith("clip-features:").all()
