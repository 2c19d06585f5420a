"""Compile warm-up with and without the persistent cache: two fresh processes, one cache directory.

    python benchmarks/compile_cache.py [--model tiny-unet] [--batch 2] [--write benchmarks/RESULTS.md]

Each process loads the model, applies harness.diffusion.compile.compile_backbone (what a worker does with
executor.compile: true) and times its first and second UNet calls. The first process starts from an
empty HARNESS_COMPILE_CACHE and pays the full compile; the second, a new worker or a later run, should
find the graphs on disk.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from _common import REPO, emit

CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, {repo!r})
torch.set_num_threads(1)
from harness.models import load_backbone
from harness.diffusion import make_condition
from harness.diffusion.compile import compile_backbone
from harness.diffusion.sampler import predict_eps
b = compile_backbone(load_backbone({model!r}))
x = torch.randn({batch}, *b.state_shape(), device=b.device)
cond = make_condition(b, [""] * {batch}, 7.5)
times = []
with torch.no_grad():
    for _ in range(2):
        if b.device.type == "cuda": torch.cuda.synchronize()
        start = time.perf_counter()
        predict_eps(b, x, 500, cond)
        if b.device.type == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-unet")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="compile-cache-")
    env = {**os.environ, "HARNESS_COMPILE_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    code = CHILD.format(repo=str(REPO), model=args.model, batch=args.batch)
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    emit([
        f"### Compile warm-up, {args.model}, batch {args.batch}",
        "",
        f"device: {device}, {os.cpu_count()} cores, 1 torch thread; date {datetime.now(timezone.utc).date()}; load average "
        f"at start {os.getloadavg()[0]:.2f}",
        "",
        "| process | first UNet call s (compile included) | second call s |",
        "|---|---|---|",
        f"| 1st, empty cache | {runs[0][0]:.2f} | {runs[0][1]:.4f} |",
        f"| 2nd, same cache | {runs[1][0]:.2f} | {runs[1][1]:.4f} |",
    ], args.write)


if __name__ == "__main__":
    main()
