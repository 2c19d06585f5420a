"""What every benchmark script shares: the repository on sys.path, offline flags, and output."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def emit(lines: list[str], write: Path | None) -> None:
    """Print a markdown section and, with --write, append it to that file."""
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        with open(write, "a") as f:
            f.write("\n" + text)
