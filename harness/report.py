"""Leaderboard from stored rows only (reports never run methods or touch models)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.store import RunStore


def leaderboard(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, model, suite): unit counts and runtime per edited image."""
    if rows.empty:
        return pd.DataFrame(columns=["method", "model", "suite", "units", "done", "failed",
                                     "edit_s_per_image", "prepare_s"])
    grouped = rows.groupby(["method", "model", "suite"], sort=True)
    table = grouped.agg(
        units=("unit_key", "count"),
        done=("status", lambda s: int((s == "done").sum())),
        failed=("status", lambda s: int((s != "done").sum())),
        edit_s_per_image=("edit_seconds", "median"),
        prepare_s=("prepare_seconds", "max"),
    ).reset_index()
    return table


def to_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "n/a" if v != v else f"{v:.{digits}g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def write_leaderboard(run_dir: str | Path) -> Path:
    store = RunStore(Path(run_dir))
    table = leaderboard(store.read_rows())
    path = store.root / "leaderboard.md"
    header = (f"# Leaderboard: run `{store.root.name}`\n\n"
              "edit_s_per_image: median wall-clock seconds per edited image (batch time / batch size, "
              f"device in rows); prepare_s: one-off preparation.\n\n")
    path.write_text(header + to_markdown(table) + "\n")
    return path
