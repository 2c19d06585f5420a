"""Results never depend on where or how work ran: in-process vs Ray, one vs two workers, killed and resumed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.config import run_config_from_dict
from harness.runner import execute, plan
from harness.store import RunStore
from tests.conftest import tiny_run

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, name: str, **executor) -> RunStore:
    cfg = run_config_from_dict(tiny_run(tmp_path, run_id=name, executor={"batch_size": 2, **executor}))
    summary = execute(plan(cfg), progress=False)
    assert summary.failed == 0 and summary.done == summary.units == 20
    return RunStore(Path(summary.run_dir))


def images(store: RunStore) -> dict[str, bytes]:
    return {str(p.relative_to(store.root)): p.read_bytes() for p in sorted((store.root / "images").rglob("*.png"))}


def comparable_rows(store: RunStore):
    rows = store.read_rows()
    return rows.drop(columns=["edit_seconds", "prepare_seconds", "batch_started_at", "batch_finished_at", "worker", "run_id"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> RunStore:
    return run(tmp_path_factory.mktemp("ref"), "inproc", kind="inprocess")


@pytest.mark.ray
@pytest.mark.parametrize("workers", [1, 2])
def test_ray_matches_inprocess_byte_for_byte(ray_session, reference, tmp_path, workers) -> None:
    store = run(tmp_path, f"ray{workers}", kind="ray", num_workers=workers)
    ref_images = images(reference)
    assert len(ref_images) == 40
    assert images(store) == ref_images
    import pandas.testing

    pandas.testing.assert_frame_equal(comparable_rows(store), comparable_rows(reference))
    if workers == 2:
        assert store.read_rows()["worker"].nunique() == 2


def test_rerun_of_finished_run_does_nothing_and_keeps_rows(reference) -> None:
    cfg = run_config_from_dict(yaml.safe_load(reference.config_path.read_text()) | {"executor": {"kind": "inprocess", "batch_size": 2}})
    summary = execute(plan(cfg), progress=False)
    assert summary.skipped_batches == len(plan(cfg).batches)
    assert len(reference.read_rows()) == 20


def test_killed_run_resumes_with_every_unit_exactly_once(reference, tmp_path) -> None:
    raw = tiny_run(tmp_path, run_id="killed", executor={"kind": "inprocess", "batch_size": 2})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    store = RunStore(tmp_path / "killed")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(cfg_path), "--no-progress"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(store.shard_dir.glob("*.parquet"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(list(store.shard_dir.glob("*.parquet")))
    assert 0 < partial < 10, "the kill must land mid-run"
    result = subprocess.run([sys.executable, "-m", "harness", "run", str(cfg_path), "--no-progress"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = store.read_rows()
    assert len(rows) == 20 and rows["unit_key"].is_unique and (rows["status"] == "done").all()
    assert images(store) == images(reference)


def test_example_method_from_readme_runs(tmp_path) -> None:
    """The README's minimal method (random-direction) through the harness, strength 0 == unedited."""
    raw = tiny_run(tmp_path, run_id="example", models=["tiny-unet"],
                   methods=[{"name": "random-direction", "options": {"scale": 5.0}, "strengths": [0.0, 1.0]}])
    summary = execute(plan(run_config_from_dict(raw)), progress=False)
    assert summary.done == summary.units == 8
    rows = RunStore(Path(summary.run_dir)).read_rows()
    root = Path(summary.run_dir)
    for row in rows.itertuples():
        same = (root / row.original_path).read_bytes() == (root / row.edited_path).read_bytes()
        assert same == (row.strength == 0.0)


def test_second_job_per_worker_only_while_every_worker_can_get_one() -> None:
    from harness.executors.ray_executor import RayExecutor

    ex = RayExecutor.__new__(RayExecutor)  # the dispatch policy alone, no Ray
    a, b = object(), object()
    ex.actors = [a, b]
    ex.ready = {id(a), id(b)}
    assert ex._next_actor({}, 2, 5) is a
    in_flight = {1: (a, None, 0.0), 2: (b, None, 0.0)}
    assert ex._next_actor(in_flight, 2, 2) is a  # enough queued for both: prefetch on the least loaded
    assert ex._next_actor(in_flight, 2, 1) is None  # the tail: the last job waits for a free worker
    assert ex._next_actor(in_flight, 1, 10) is None  # jobs_per_worker 1
    in_flight[3] = (a, None, 0.0)
    assert ex._next_actor(in_flight, 2, 5) is b
    in_flight[4] = (b, None, 0.0)
    assert ex._next_actor(in_flight, 2, 5) is None


def test_work_goes_only_to_workers_that_have_started() -> None:
    """A replacement the cluster has no room for (a node was lost) must not be handed jobs it never runs."""
    from harness.executors.ray_executor import RayExecutor

    ex = RayExecutor.__new__(RayExecutor)
    survivor, pending = object(), object()
    ex.actors, ex.ready = [pending, survivor], {id(survivor)}
    assert ex._next_actor({}, 2, 5) is survivor
    assert ex._next_actor({1: (survivor, None, 0.0)}, 2, 5) is survivor  # the queue is its alone: prefetch
    ex.ready = set()
    assert ex._next_actor({}, 2, 5) is None


def test_rerun_after_a_checkpoint_changed_is_refused(tmp_path, monkeypatch) -> None:
    """Unit keys name models, not weights: the fingerprints in config.yaml stop stale images passing as done."""
    import harness.runner as runner
    from harness.errors import HarnessError

    raw = tiny_run(tmp_path, run_id="fp", models=["tiny-unet"], items=["smile"], seeds=1,
                   methods=[{"name": "random-direction"}])
    summary = execute(plan(run_config_from_dict(raw)), progress=False)
    assert summary.done == 1
    assert "model_fingerprints" in (Path(summary.run_dir) / "config.yaml").read_text()
    monkeypatch.setattr(runner, "model_fingerprint", lambda spec: "retrained-weights")
    with pytest.raises(HarnessError, match="retrained-weights"):
        execute(plan(run_config_from_dict(raw)), progress=False)


def test_readme_method_example_is_the_module_complete() -> None:
    """The README's example is methods/random_direction.py itself (imports included), docstring aside."""
    import methods.random_direction as module

    readme = (REPO / "README.md").read_text()
    block = readme.split("`methods/random_direction.py`, complete", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    source = Path(module.__file__).read_text()
    body = source[source.index('"""', 3) + 3:].lstrip("\n")
    assert block == body


def test_method_that_overrides_prepare_is_prepared_without_a_flag(tmp_path) -> None:
    """needs_prepare is derived from the override: forgetting a flag cannot leave `edit` without its state."""
    import torch

    from methods.base import EditMethod, EditOutput, register_method

    @register_method("test-prepared")
    class Prepared(EditMethod):
        def prepare(self, backbone, ctx):
            return {"level": 0.25}

        def edit(self, backbone, state, requests, sampler):
            image = torch.full((3, backbone.resolution, backbone.resolution), state["level"])
            return [EditOutput(image, image + 0.5) for _ in requests]

    assert Prepared.needs_prepare
    raw = tiny_run(tmp_path, run_id="prep", models=["tiny-unet"], seeds=1, methods=[{"name": "test-prepared"}])
    summary = execute(plan(run_config_from_dict(raw)), progress=False)
    rows = RunStore(Path(summary.run_dir)).read_rows()
    assert summary.done == summary.units == 2, rows["error"].tolist()


def test_a_needs_prepare_flag_contradicting_the_override_is_refused() -> None:
    from methods.base import EditMethod

    with pytest.raises(TypeError, match="needs_prepare"):
        class Flagged(EditMethod):
            needs_prepare = True  # but no prepare: the harness would cache an empty state for nothing


PLUGIN = '''
import torch

from methods.base import EditMethod, EditOutput, register_method


@register_method("test-code-change")
class Flat(EditMethod):
    families = ("unconditional",)

    def edit(self, backbone, state, requests, sampler):
        image = torch.full((3, backbone.resolution, backbone.resolution), {level})
        return [EditOutput(image, image) for _ in requests]
'''


def test_changed_method_code_is_refused_naming_the_module(tmp_path, monkeypatch) -> None:
    """Editing a method's code without bumping `version` must not resume the run with the old images as done."""
    import importlib

    from harness.errors import HarnessError

    module = tmp_path / "lc_code_change_method.py"
    module.write_text(PLUGIN.format(level=0.25))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("lc_code_change_method")
    raw = tiny_run(tmp_path, run_id="code", models=["tiny-unet"], seeds=1, methods=[{"name": "test-code-change"}])
    assert execute(plan(run_config_from_dict(raw)), progress=False).done == 2
    assert str(module) in (Path(tmp_path) / "code" / "config.yaml").read_text()
    module.write_text(PLUGIN.format(level=0.625))  # the edit; `version` stays 1
    with pytest.raises(HarnessError) as refused:
        execute(plan(run_config_from_dict(raw)), progress=False)
    message = str(refused.value)
    assert f"{module} (test-code-change)" in message and "--accept-code-change" in message and "run_id" in message
    assert f"-  {module}:" in message  # the diff names the module
    summary = execute(plan(run_config_from_dict(raw)), progress=False, accept_code_change=True)
    assert summary.done == 2
    amendment = RunStore(Path(summary.run_dir)).manifest()["amendments"][0]["changed"]["code_fingerprints"]
    assert list(amendment) == [str(module)]
