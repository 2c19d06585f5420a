"""Injected faults: every unit ends exactly once, done or failed with a reason; done images match an undisturbed run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from harness.config import run_config_from_dict
from harness.runner import execute, plan
from harness.store import RunStore
from methods.base import EditMethod, EditOutput, register_method
from tests.conftest import tiny_run

REPO = Path(__file__).resolve().parents[2]


def small(tmp_path: Path, run_id: str, **executor) -> dict:
    return tiny_run(tmp_path, run_id=run_id, models=["tiny-unet"], seeds=2,
                    methods=[{"name": "random-direction", "options": {"scale": 5.0}}],
                    executor={"batch_size": 2, "kind": "inprocess", **executor})


def run(raw: dict):
    summary = execute(plan(run_config_from_dict(raw)), progress=False)
    return RunStore(Path(summary.run_dir)), summary


def images(store: RunStore) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (store.root / "images").rglob("*.png")}


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    store, summary = run(small(tmp_path_factory.mktemp("ref"), "ref"))
    assert summary.done == 4
    return store


@pytest.fixture(scope="module")
def undisturbed_batch1(tmp_path_factory):
    """Units recovered by splitting a batch ran at batch size 1; CPU kernels are not batch-size invariant."""
    store, summary = run(small(tmp_path_factory.mktemp("ref1"), "ref1", batch_size=1))
    assert summary.done == 4
    return store


def assert_exactly_once(store: RunStore, n: int = 4):
    rows = store.read_rows()
    assert len(rows) == n and rows["unit_key"].is_unique
    assert rows.loc[rows.status != "done", "error"].notna().all()
    return rows


def assert_done_images_match(store: RunStore, reference: RunStore, reference_batch1: RunStore | None = None) -> None:
    """Done units equal the undisturbed run's bytes; units re-run alone equal an undisturbed batch-size-1 run."""
    got = images(store)
    rows = store.read_rows()
    recovered = {k for k, info in zip(rows.unit_key, rows["info"]) if isinstance(info, str) and "recovery" in json.loads(info)}
    assert got
    for name, data in got.items():
        ref = reference_batch1 if name.split(".")[0] in recovered else reference
        assert ref is not None, f"{name} was recovered but no batch-1 reference was given"
        assert data == images(ref)[name], name


def test_exception_in_one_unit_is_retried_then_recorded(tmp_path, undisturbed, undisturbed_batch1, monkeypatch) -> None:
    bad = undisturbed.read_rows()["unit_key"].iloc[0]
    monkeypatch.setenv("HARNESS_FAULTS", json.dumps({"raise_on": [bad]}))
    store, summary = run(small(tmp_path, "raise"))
    rows = assert_exactly_once(store)
    failed = rows[rows.status == "failed"]
    assert list(failed.unit_key) == [bad] and "injected fault" in failed.error.iloc[0]
    assert summary.done == 3
    assert_done_images_match(store, undisturbed, undisturbed_batch1)


def test_out_of_memory_halves_the_batch(tmp_path, undisturbed, undisturbed_batch1, monkeypatch) -> None:
    monkeypatch.setenv("HARNESS_FAULTS", json.dumps({"oom_batch_gt": 1}))
    store, summary = run(small(tmp_path, "oom"))
    rows = assert_exactly_once(store)
    assert (rows.status == "done").all()
    assert all("out-of-memory" in json.loads(i)["recovery"] for i in rows["info"])
    assert_done_images_match(store, undisturbed, undisturbed_batch1)


def test_nan_image_is_a_failed_unit_with_reason(tmp_path) -> None:
    @register_method("test-nan")
    class NaNMethod(EditMethod):
        def edit(self, backbone, state, requests, sampler):
            img = torch.zeros(3, 32, 32)
            return [EditOutput(img, img * float("nan") if r.strength > 0 else img) for r in requests]

    raw = small(tmp_path, "nan", )
    raw["methods"] = [{"name": "test-nan", "strengths": [0.0, 1.0]}]
    store, summary = run(raw)
    rows = assert_exactly_once(store, 8)
    assert set(rows[rows.strength > 0].error) == {"non-finite values (NaN/inf) in the method's output image"}
    assert (rows[rows.strength == 0].status == "done").all()


def _prompt_suite(tmp_path: Path, *prompts: tuple[str, str]) -> Path:
    suite = tmp_path / "bad_prompts.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "bad_prompts", "version": 1, "attributes": {"a": {"positive": "p", "negative": "n"}},
        "items": [{"id": i, "attribute": "a", "prompt": p, "target_prompt": "a blue circle"} for i, p in prompts]}))
    return suite


def test_too_long_prompt_fails_its_unit_only(tmp_path) -> None:
    suite = _prompt_suite(tmp_path, ("ok", "a red circle"), ("long", "circle " * 100))
    raw = tiny_run(tmp_path, run_id="prompts", models=["tiny-sd"], suites=[str(suite)], items=None, seeds=1,
                   methods=[{"name": "sd"}], executor={"kind": "inprocess", "batch_size": 2})
    store, summary = run(raw)
    rows = assert_exactly_once(store, 2).set_index("item_id")
    assert rows.loc["ok", "status"] == "done"
    assert "longer than the text encoder" in rows.loc["long", "error"]


def test_empty_prompt_is_refused_before_any_work(tmp_path, capsys) -> None:
    """Every unit of the item would fail: refused up front, naming the suite item (exit 2, nothing written)."""
    from harness.cli import main

    suite = _prompt_suite(tmp_path, ("ok", "a red circle"), ("empty", "  "))
    raw = tiny_run(tmp_path / "out", run_id="prompts", models=["tiny-sd"], suites=[str(suite)], items=None, seeds=1,
                   methods=[{"name": "sd"}])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["run", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "items[empty].prompt" in err[0] and "allowed" in err[0], err
    assert not (tmp_path / "out").exists()


def test_truncated_shard_is_redone(tmp_path, undisturbed) -> None:
    raw = small(tmp_path, "trunc")
    store, _ = run(raw)
    shard = sorted(store.shard_dir.glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    store, summary = run(raw)
    assert summary.skipped_batches == 1
    assert_exactly_once(store)
    assert images(store) == images(undisturbed)


def test_concurrent_run_on_same_run_id_is_refused(tmp_path) -> None:
    raw = small(tmp_path, "conc")
    raw["seeds"] = 6
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "harness", "run", str(cfg), "--no-progress"]
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = tmp_path / "conc" / "run.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().startswith("pid")):
        time.sleep(0.05)
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=300) == 0
    assert second.returncode == 2 and "in use" in second.stderr
    assert_exactly_once(RunStore(tmp_path / "conc"), 12)


@pytest.mark.ray
def test_killed_ray_worker_is_replaced_and_its_batch_resubmitted(ray_session, tmp_path, undisturbed, monkeypatch) -> None:
    victim = undisturbed.read_rows()["unit_key"].iloc[2]
    monkeypatch.setenv("HARNESS_FAULTS", json.dumps({"kill_on": victim}))
    store, summary = run(small(tmp_path, "killw", kind="ray", num_workers=2))
    rows = assert_exactly_once(store)
    assert (rows.status == "done").all()
    assert (store.root / f".fault-killed-{victim}").exists()
    assert images(store) == images(undisturbed)


@pytest.mark.ray
def test_hung_unit_times_out_and_is_recorded(ray_session, tmp_path, undisturbed, monkeypatch) -> None:
    victim = undisturbed.read_rows()["unit_key"].iloc[0]
    monkeypatch.setenv("HARNESS_FAULTS", json.dumps({"hang_on": victim}))
    store, summary = run(small(tmp_path, "hang", kind="ray", num_workers=1, unit_timeout_s=30.0))
    rows = assert_exactly_once(store)
    timed_out = rows[rows.status == "failed"]
    assert victim in set(timed_out.unit_key) and timed_out.error.str.contains("timed out").all()
    assert (rows.status == "done").sum() >= 2
    assert_done_images_match(store, undisturbed)
    # A timed-out unit is not final either: once the cause is gone, --retry-failed redoes it.
    monkeypatch.delenv("HARNESS_FAULTS")
    raw = small(tmp_path, "hang", kind="ray", num_workers=1, unit_timeout_s=30.0)
    summary = execute(plan(run_config_from_dict(raw)), progress=False, retry_failed=True)
    assert summary.retried == len(timed_out) and summary.failed == 0
    assert (assert_exactly_once(store).status == "done").all()
    assert images(store) == images(undisturbed)


def test_verify_reports_identical_and_tampered_images(tmp_path, undisturbed, capsys) -> None:
    from harness.cli import main

    assert main(["verify", str(undisturbed.root), "--sample", "2"]) == 0
    assert "8/8 images byte-identical" in capsys.readouterr().out  # 2 batches x 2 units x (original, edit)
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(undisturbed.root, copy)
    victim = sorted((copy / "images").rglob("*.edit.png"))[0]
    victim.write_bytes(victim.read_bytes()[:-20] + b"\0" * 20)
    assert main(["verify", str(copy), "--sample", "2"]) == 1
    assert victim.name in capsys.readouterr().out


def test_failed_units_are_retried_exactly_with_retry_failed(tmp_path, undisturbed, undisturbed_batch1, monkeypatch,
                                                           capsys) -> None:
    """A failed unit is not final: --retry-failed redoes it (in its batch, so with the undisturbed run's bytes) and
    leaves its batch-mate's row and images as they were; a plain re-run does nothing and still reports it."""
    from harness.cli import main

    bad = undisturbed.read_rows()["unit_key"].iloc[0]
    monkeypatch.setenv("HARNESS_FAULTS", json.dumps({"raise_on": [bad]}))
    raw = small(tmp_path, "retry")
    store, summary = run(raw)
    assert summary.failed == 1
    monkeypatch.delenv("HARNESS_FAULTS")  # the transient cause is gone
    assert main(["status", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "failed units by reason (1)" in out and "injected fault" in out and "--retry-failed" in out
    _, again = run(raw)
    assert again.failed == 1 and again.retried == 0 and again.executor.startswith("none")
    before = store.read_rows().set_index("unit_key")
    mate = before.loc[(before.batch_key == before.loc[bad, "batch_key"]) & (before.index != bad)].iloc[0]
    mate_files = {c: (store.root / mate[c]).stat().st_mtime_ns for c in ("original_path", "edited_path")}
    summary = execute(plan(run_config_from_dict(raw)), progress=False, retry_failed=True)
    assert (summary.retried, summary.done, summary.failed) == (1, 4, 0)
    rows = assert_exactly_once(store).set_index("unit_key")
    pd_mate = rows.loc[mate.name]
    assert pd_mate["info"] == mate["info"] and pd_mate["batch_started_at"] == mate["batch_started_at"]
    assert {c: (store.root / mate[c]).stat().st_mtime_ns for c in mate_files} == mate_files
    assert_done_images_match(store, undisturbed, undisturbed_batch1)  # the retried unit: undisturbed bytes
