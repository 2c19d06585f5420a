"""Ray beyond one local instance: a cluster named by RAY_ADDRESS, a node lost mid-run, a driver killed mid-run.

The cluster is `ray.cluster_utils.Cluster` on this machine: a head without CPUs (so no work runs there) and
two worker nodes of one CPU each, so each of two actors sits on its own node. Runs are driven by the CLI
in a subprocess, as a user would run them.
"""
from __future__ import annotations

import os
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
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    c.shutdown()


def small(tmp_path: Path, run_id: str, seeds: int, **executor) -> dict:
    return tiny_run(tmp_path, run_id=run_id, models=["tiny-unet"], seeds=seeds,
                    methods=[{"name": "random-direction", "options": {"scale": 5.0}}],
                    executor={"kind": "ray", "batch_size": 1, **executor})


def harness_run(tmp_path: Path, raw: dict, **env: str) -> subprocess.Popen:
    cfg = tmp_path / f"{raw['run_id']}.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO), **env}
    return subprocess.Popen([sys.executable, "-m", "harness", "run", str(cfg), "--no-progress"], cwd=REPO,
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def images(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (root / "images").rglob("*.png")}


def wait_for_shards(root: Path, n: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while len(list((root / "shards").glob("*.parquet"))) < n:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()  # never leave a driver (and its Ray instance) behind a failed test
            pytest.fail(f"the run did not get going: {proc.communicate()[1][-2000:]}")
        time.sleep(0.1)


def test_ray_address_in_the_environment_is_joined(cluster, tmp_path) -> None:
    """Ray's convention: RAY_ADDRESS stands for --address (the harness used to pass num_cpus and fail)."""
    c, _ = cluster
    proc = harness_run(tmp_path, small(tmp_path, "env", seeds=1, num_workers=1), RAY_ADDRESS=c.address)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "joined the Ray cluster at" in err and "(from RAY_ADDRESS)" in err
    assert len(RunStore(tmp_path / "env").read_rows()) == 2


def test_losing_a_node_mid_run_keeps_every_unit_exactly_once_and_the_same_bytes(cluster, tmp_path) -> None:
    c, workers = cluster
    raw = small(tmp_path, "nodes", seeds=4, num_workers=2, address=c.address)
    reference = execute(plan(run_config_from_dict(raw | {"run_id": "ref", "executor": {"kind": "inprocess",
                                                                                        "batch_size": 1}})),
                        progress=False)
    proc = harness_run(tmp_path, raw)
    wait_for_shards(tmp_path / "nodes", 2, proc)
    c.remove_node(workers[1])  # its actor dies mid-run; no node has room for a replacement
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "worker died" in err
    rows = RunStore(tmp_path / "nodes").read_rows()
    assert len(rows) == reference.units == 8 and rows["unit_key"].is_unique and (rows["status"] == "done").all()
    assert images(tmp_path / "nodes") == images(Path(reference.run_dir))


@pytest.mark.slow
def test_a_killed_driver_leaves_no_ray_process_behind(tmp_path) -> None:
    """SIGKILL of the driver: Ray's agents used to outlive it by about a minute (harness.executors.reaper)."""
    import psutil

    raw = small(tmp_path, "killed", seeds=8, num_workers=1)
    proc = harness_run(tmp_path, raw)
    wait_for_shards(tmp_path / "killed", 1, proc)
    started = psutil.Process(proc.pid).children(recursive=True)
    assert any("raylet" in " ".join(p.cmdline()) for p in started)
    proc.kill()
    proc.communicate()
    _, alive = psutil.wait_procs(started, timeout=20)
    assert not alive, [p.name() for p in alive]
