"""Ends a local Ray instance's processes when the driver that started it is gone (`python -m harness.executors.reaper`).

Ray starts its processes to die with the driver (SIGKILL on parent death), but a raylet killed that way
leaves its dashboard and runtime-env agents behind for about a minute: they first try to report the
"unexpected" death to the GCS, which died too, with a 60 s timeout. The driver starts this reaper in its
own session with a pipe on stdin and writes one JSON line: the processes it started, as
[{"pid": ..., "created": ...}]. End of input means the driver has exited or shut Ray down; every listed
process still running (same pid *and* start time, so a reused pid is never touched) gets SIGTERM, then
SIGKILL after a grace period. Imports no Ray: it must not start anything itself.
"""
from __future__ import annotations

import json
import sys
import time

GRACE_S = 3.0


def reap(procs: list[dict], grace_s: float = GRACE_S) -> int:
    """Terminate the listed processes that are still the same processes; returns how many were signalled."""
    import psutil

    alive = []
    for entry in procs:
        try:
            proc = psutil.Process(int(entry["pid"]))
            if abs(proc.create_time() - float(entry["created"])) < 1e-3:
                alive.append(proc)
        except (psutil.Error, KeyError, ValueError):
            continue
    for proc in alive:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=grace_s)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return len(alive)


def main() -> None:
    line = sys.stdin.readline()
    procs = json.loads(line) if line.strip() else []
    while sys.stdin.read(1 << 16):  # blocks until the driver closes the pipe or dies
        pass
    time.sleep(0.5)  # a driver shutting Ray down normally finishes first; this only catches what is left
    reap(procs)


if __name__ == "__main__":
    main()
