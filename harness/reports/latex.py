"""LaTeX `tabular` output, ready to paste: escaped text, one `\\` per row, \\hline rules, no packages needed."""
from __future__ import annotations

import re

from harness.reports.render import MISSING, TextTable

_SPECIAL = {
    "\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}",
}
_UNICODE = {"±": r"$\pm$", "−": r"$-$", "–": "--", "→": r"$\rightarrow$", "Δ": r"$\Delta$", "×": r"$\times$",
            "≥": r"$\geq$", "≤": r"$\leq$", "·": r"$\cdot$"}
_PATTERN = re.compile("|".join(re.escape(c) for c in list(_SPECIAL) + list(_UNICODE)))


def escape(text: str) -> str:
    """Text-mode escape of the LaTeX specials (_ % & # $ { } ~ ^ \\ < > |) and the symbols reports use."""
    return _PATTERN.sub(lambda m: _SPECIAL.get(m.group(0)) or _UNICODE[m.group(0)], str(text))


def to_latex(table: TextTable, comments: list[str] | None = None) -> str:
    """A complete tabular environment; `comments` go above it as % lines."""
    def cell(i: int, j: int, text: str) -> str:
        if text == MISSING:
            return "--"
        body = escape(text)
        return rf"\textbf{{{body}}}" if (i, j) in table.bold and text else body

    spec = "".join("r" if n else "l" for n in table.numeric)
    lines = [f"% {line}" for c in comments or [] for line in c.splitlines()]
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\hline",
              " & ".join(escape(c) for c in table.columns) + r" \\", r"\hline"]
    for i, row in enumerate(table.rows):
        lines.append(" & ".join(cell(i, j, c) for j, c in enumerate(row)) + r" \\")
        if i in table.rules_after and i != len(table.rows) - 1:
            lines.append(r"\hline")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines)
