"""Worker utilisation of the Ray executor with N logical GPUs and units of uneven cost, on a CPU machine.

    python benchmarks/scheduling.py                      # 4 fake GPUs, 120 units costing 0.05-0.5 s
    python benchmarks/scheduling.py --gpus 8 --units 400 --write benchmarks/RESULTS.md

Ray is started with N declared GPUs (no real ones), so the executor starts one actor per "GPU" exactly
as on a GPU node. Each unit's cost is a sleep drawn once from a seeded uniform range (injected through
HARNESS_FAULTS delay_s, inside the worker's device lock, where the method runs), so the figure measures
scheduling, not CPU contention; the tiny model's real work is a few milliseconds on top. For each
jobs_per_worker setting it prints:

- busy fraction: merged busy time of all workers / (N x time from the first batch start to the last
  batch end) (harness.utilisation), the issue's target being >= 0.95;
- the same over the whole execute() call, which adds actor start and model load;
- the makespan (first batch start to last batch end) against its lower bound given the batches' measured
  durations, max(total busy time / N, longest batch): the time lost to scheduling alone.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import emit

from harness.config import run_config_from_dict
from harness.runner import execute, plan
from harness.store import RunStore
from harness.utilisation import utilisation


def config(args: argparse.Namespace, out: Path, run_id: str, jobs_per_worker: int) -> dict:
    return {
        "run_id": run_id, "models": ["tiny-sd"], "suites": ["hspace_paper"], "items": ["smile"],
        "seeds": list(range(args.units)), "strengths": [1.0],
        "sampler": {"num_steps": 2, "eta": 0.0, "guidance_scale": 7.5},
        "methods": [{"name": "sd"}],
        "executor": {"kind": "ray", "num_workers": args.gpus, "gpus_per_worker": 1, "batch_size": args.batch_size,
                     "jobs_per_worker": jobs_per_worker, "threads": 1},
        "output_dir": str(out),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=4, help="logical GPUs declared to Ray (one actor each)")
    ap.add_argument("--units", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--min-cost", type=float, default=0.05, help="seconds per unit, lower end")
    ap.add_argument("--max-cost", type=float, default=0.5, help="seconds per unit, upper end")
    ap.add_argument("--jobs-per-worker", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", type=Path, help="append the table to this markdown file")
    args = ap.parse_args()

    from harness.executors.ray_executor import ensure_ray

    ensure_ray(None, num_gpus=args.gpus)
    tmp = Path(tempfile.mkdtemp(prefix="sched-"))
    lines = [
        f"### Scheduling: {args.gpus} logical GPUs, {args.units} units of {args.min_cost}-{args.max_cost} s "
        f"(uniform, seed {args.seed}), batch {args.batch_size}",
        "",
        f"device: CPU, {os.cpu_count()} cores, Ray with {args.gpus} declared GPUs; date "
        f"{datetime.now(timezone.utc).date()}; load average at start {os.getloadavg()[0]:.2f}; unit cost = injected "
        "sleep inside the worker's device lock (plus the tiny model's few ms)",
        "",
        "| jobs_per_worker | busy fraction (first start to last end) | busy fraction (whole execute, incl. actor "
        "start + model load) | makespan s | bound from measured batch times s | makespan / bound | injected cost s "
        "(sum over units) |",
        "|---|---|---|---|---|---|---|",
    ]
    try:
        for depth in args.jobs_per_worker:
            run_id = f"sched-d{depth}"
            p = plan(run_config_from_dict(config(args, tmp, run_id, depth)))
            # Drawn from the unit key, so every setting sees the same costs.
            costs = {u.key: random.Random(f"{args.seed}-{u.key}").uniform(args.min_cost, args.max_cost)
                     for b in p.batches for u in b.units}
            os.environ["HARNESS_FAULTS"] = json.dumps({"delay_s": costs})
            try:
                start = time.perf_counter()
                summary = execute(p, progress=False)
                wall = time.perf_counter() - start
            finally:
                os.environ.pop("HARNESS_FAULTS", None)
            assert summary.failed == 0, f"{summary.failed} units failed"
            rows = RunStore(Path(summary.run_dir)).read_rows().drop_duplicates("batch_key")
            u = utilisation(rows, workers=args.gpus)
            longest = float((rows["batch_finished_at"] - rows["batch_started_at"]).max())
            bound = max(sum(u.busy_s.values()) / args.gpus, longest)
            lines.append(f"| {depth} | {u.busy_fraction:.3f} | {u.fraction_of(wall):.3f} | {u.window_s:.2f} | "
                         f"{bound:.2f} | {u.window_s / bound:.3f} | {sum(costs.values()):.1f} |")
            print(lines[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit(lines, args.write)


if __name__ == "__main__":
    main()
