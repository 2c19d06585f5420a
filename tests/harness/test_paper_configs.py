"""The papers' table configs (for real weights and GPUs) are valid and complete: each runs end to end on the CPU
with the models swapped for tiny ones by overrides, and `paper-tables` on the run fills every cell it can."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.config import CONFIG_DIR, load_run_config

WORLD_CLIP = str(Path(__file__).resolve().parents[2] / "checkpoints" / "world-clip")
TINY_METRICS = [
    "metrics.fid.backbone=random-test", "metrics.fid.feature_dim=8", "metrics.fid.weights=null",
    "metrics.clip.backend=transformers", f"metrics.clip.model={WORLD_CLIP}", "metrics.clip.pretrained=null",
    "metrics.lpips.net=squeeze", "metrics.lpips.random_backbone=true",
]
CLIP_SCORER = f"{{kind: clip, options: {{backend: transformers, model: {WORLD_CLIP}}}}}"


def _run(config: str, overrides: list[str], tmp_path: Path, capsys) -> str:
    overrides = [f"output_dir={tmp_path}", "executor.kind=inprocess", "sampler.num_steps=4", *overrides]
    cfg = load_run_config(CONFIG_DIR / config, overrides)  # the config itself validates, overrides and all
    assert main(["run", str(CONFIG_DIR / config), *overrides, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["paper-tables", str(tmp_path / cfg.run_id)]) == 0
    return capsys.readouterr().out


def test_paper_svd_table1_config_runs_on_tiny_models_and_fills_table_1(tmp_path, capsys) -> None:
    out = _run("paper_svd_table1.yaml", [
        "models=[tiny-sd]", "seeds=2", "items=[teacher-female, teacher-male, teacher-old, teacher-young]",
        "methods.avi.options.samples_per_pair=4", "methods.avi.options.epochs=1",
        "methods.park.options.n_guidance=2", "methods.park.options.convergence.max_iters=2",
        "methods.park.options.convergence.min_iters=1", f"methods.park.options.scorer={CLIP_SCORER}",
        *TINY_METRICS], tmp_path, capsys)
    table = out[out.index("Table 1"):]
    for method in ("sd", "park", "avi"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {method} "))
        assert "—" not in row.split("|", 3)[2], row  # every attribute cell of ours is filled
    assert "no fid" not in table and "no `" not in table


def test_paper_hspace_table1_config_runs_on_tiny_models_and_fills_table_i(tmp_path, capsys) -> None:
    scorer = f"{{kind: clip, options: {{backend: transformers, model: {WORLD_CLIP}}}}}"
    out = _run("paper_hspace_table1.yaml", [
        "models=[tiny-unet]", "seeds=2", "methods.supervised.options.n_samples=8",
        "methods.supervised.options.n_examples=2", f"methods.supervised.options.scorer={scorer}",
        "methods.supervised-projected.options.n_samples=8", "methods.supervised-projected.options.n_examples=2",
        f"methods.supervised-projected.options.scorer={scorer}",
        "metrics.clip.backend=transformers", f"metrics.clip.model={WORLD_CLIP}", "metrics.clip.pretrained=null",
    ], tmp_path, capsys)
    table = out[out.index("Table I"):]
    assert "no `supervised" not in table, table
