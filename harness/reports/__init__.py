"""Reports from stored results only (they never run a method or load a model).

    tables.py        the leaderboard over any set of runs (one row per method, model, suite)
    render.py        text tables as Markdown and HTML;  latex.py: as a LaTeX tabular
    paper_tables.py  the papers' tables beside our numbers (published values: configs/tables/published.yaml)
    svg.py, html.py  the static per-run HTML report with inline SVG plots and image grids
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from harness.reports.data import RunData, load_run, load_runs
from harness.reports.latex import to_latex
from harness.reports.render import to_markdown
from harness.reports.tables import Leaderboard, build_leaderboard

FORMATS = ("md", "tex", "csv", "parquet", "html")

__all__ = ["FORMATS", "Leaderboard", "RunData", "build_leaderboard", "load_run", "load_runs", "render_leaderboard",
           "write_leaderboard"]


def render_leaderboard(board: Leaderboard, fmt: str, title: str = "") -> str:
    """The leaderboard as md (with notes), tex (notes as % comments) or csv text."""
    if fmt == "md":
        head = f"# {title}\n\n" if title else ""
        return head + to_markdown(board.text_table()) + "\n\n" + "\n".join(f"- {n}" for n in board.notes) + "\n"
    if fmt == "tex":
        return to_latex(board.text_table(), ([title] if title else []) + board.notes) + "\n"
    if fmt == "csv":
        return board.to_frame().to_csv(index=False)
    raise ValueError(f"render_leaderboard: format {fmt!r} is not text; use md, tex or csv")


def write_leaderboard(run_dir: str | Path, sort: str | None = None) -> Path:
    """results/<run>/leaderboard.md (what `harness run` and `harness metrics` write at the end)."""
    run = load_run(run_dir)
    path = run.root / "leaderboard.md"
    path.write_text(render_leaderboard(build_leaderboard([run], sort), "md", f"Leaderboard: run `{run.name}`"))
    return path


def runs_title(runs: Sequence[RunData]) -> str:
    return f"Leaderboard: run{'s' if len(runs) > 1 else ''} " + ", ".join(f"`{r.name}`" for r in runs)
