"""The papers' table configs (for real weights and GPUs) are valid and complete: each runs end to end on the CPU
with the models swapped for tiny ones by overrides, and `paper-tables` on the run fills every cell it can."""
from __future__ import annotations

from pathlib import Path


from harness.cli import main
from harness.config import CONFIG_DIR, load_run_config

WORLD_CLIP = str(Path(__file__).resolve().parents[2] / "checkpoints" / "world-clip")
TINY_METRICS = [
    "metrics.fid.backbone=random-test", "metrics.fid.feature_dim=8", "metrics.fid.weights=null",
    "metrics.clip.backend=transformers", f"metrics.clip.model={WORLD_CLIP}", "metrics.clip.pretrained=null",
    "metrics.lpips.net=squeeze", "metrics.lpips.random_backbone=true",
]
CLIP_SCORER = f"{{kind: clip, options: {{backend: transformers, model: {WORLD_CLIP}}}}}"


def _run(config: str, overrides: list[str], table: str, tmp_path: Path, capsys) -> str:
    overrides = [f"output_dir={tmp_path}", "executor.kind=inprocess", "sampler.num_steps=4", *overrides]
    cfg = load_run_config(CONFIG_DIR / config, overrides)  # the config itself validates, overrides and all
    assert main(["run", str(CONFIG_DIR / config), *overrides, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["paper-tables", str(tmp_path / cfg.run_id), "--table", table]) == 0
    return capsys.readouterr().out


def test_paper_svd_table1_config_runs_on_tiny_models_and_fills_table_1(tmp_path, capsys) -> None:
    out = _run("paper_svd_table1.yaml", [
        "models=[tiny-sd]", "seeds=2", "items=[teacher-female, teacher-male, teacher-old, teacher-young]",
        "methods.avi.options.samples_per_pair=4", "methods.avi.options.epochs=1",
        "methods.park.options.n_guidance=2", "methods.park.options.convergence.max_iters=2",
        "methods.park.options.convergence.min_iters=1", f"methods.park.options.scorer={CLIP_SCORER}",
        *TINY_METRICS], "svd", tmp_path, capsys)
    ours = [line for line in out.splitlines() if line.startswith("|  | ours |")]
    assert len(ours) == 3, out  # SD, Park et al., AVI
    for row in ours:  # every attribute's FID / CLIP / LPIPS and the runtime, filled
        cells = [c.strip() for c in row.strip("|").split("|")[2:]]
        assert len(cells) == 5 and all(c and "—" not in c and "nan" not in c for c in cells), row
    assert "Missing:" not in out, out


def test_paper_hspace_table1_config_runs_on_tiny_models_and_fills_table_i(tmp_path, capsys) -> None:
    scorer = f"{{kind: clip, options: {{backend: transformers, model: {WORLD_CLIP}}}}}"
    out = _run("paper_hspace_table1.yaml", [
        "models=[tiny-unet]", "seeds=2", "methods.supervised.options.n_samples=8",
        "methods.supervised.options.n_examples=2", f"methods.supervised.options.scorer={scorer}",
        "methods.supervised-projected.options.n_samples=8", "methods.supervised-projected.options.n_examples=2",
        f"methods.supervised-projected.options.scorer={scorer}",
        "metrics.clip.backend=transformers", f"metrics.clip.model={WORLD_CLIP}", "metrics.clip.pretrained=null",
    ], "hspace", tmp_path, capsys)
    assert "Missing:" not in out, out
    ours = [line for line in out.splitlines() if "| ours |" in line]
    assert len(ours) == 10, out  # five edits, original and disentangled directions
    for row in ours:
        cells = [c.strip() for c in row.strip("|").split("|")[2:]]
        assert len(cells) == 5 and all(c and "—" not in c and "nan" not in c for c in cells), row
