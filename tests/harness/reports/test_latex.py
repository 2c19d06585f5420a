"""LaTeX output: a balanced tabular, one \\\\ per row, the right number of &, escaped names."""
from __future__ import annotations

import re
from pathlib import Path

from harness.reports import build_leaderboard, load_run, render_leaderboard
from harness.reports.latex import escape
from tests.harness.reports.synthetic import aggregate, make_run, unit

NASTY_METHOD = "a_b%&#$"
NASTY_MODEL = "m~^{x}\\y"


def check_tabular(tex: str) -> list[str]:
    """Structure checks shared with the paper-table tests; returns the body rows."""
    body = [line for line in tex.splitlines() if line and not line.startswith("%")]
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") >= 1
    for block in re.findall(r"\\begin\{tabular\}\{([lrc]+)\}(.*?)\\end\{tabular\}", tex, re.S):
        ncols = len(block[0])
        rows = [r for r in block[1].strip().splitlines() if r.strip() != r"\hline"]
        assert rows, "a tabular without rows"
        for r in rows:
            assert r.endswith(r" \\"), r
            assert len(re.findall(r"(?<!\\)&", r)) == ncols - 1, r
    stripped = re.sub(r"\\[{}]", "", "\n".join(body))
    depth = 0
    for ch in stripped:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert not re.search(r"(?<!\\)[%#_^~]", re.sub(r"\\textasciitilde\{\}|\\textasciicircum\{\}", "", "\n".join(body)))
    return body


def test_escape_every_special() -> None:
    assert escape("_ % & # $ { } ~ ^ \\") == (r"\_ \% \& \# \$ \{ \} \textasciitilde{} \textasciicircum{} "
                                              r"\textbackslash{}")
    assert escape("0.1 ± 0.2") == r"0.1 $\pm$ 0.2"


def test_leaderboard_tabular(tmp_path: Path) -> None:
    rows = [unit(m, "smile", s, model=NASTY_MODEL, edit_seconds=1.0 + i) for i, m in enumerate((NASTY_METHOD, "plain"))
            for s in (0, 1)]
    agg = [aggregate(NASTY_METHOD, "smile", "fid", 3.0, model=NASTY_MODEL),
           aggregate("plain", "smile", "fid", 4.0, model=NASTY_MODEL)]
    tex = render_leaderboard(build_leaderboard([load_run(make_run(tmp_path / "r", rows, (), agg))]), "tex")
    body = check_tabular(tex)
    assert any(line.startswith(r"a\_b\%\&\#\$ & m\textasciitilde{}\textasciicircum{}\{x\}\textbackslash{}y & s &")
               for line in body), tex
    assert r"\textbf{3}" in tex and r"\textbf{1 $\pm$ 0}" in tex
    assert r"edit\_s\_per\_image" in tex
