"""A table as text cells, and its Markdown and HTML renderings (LaTeX lives in latex.py).

Cells are plain, unescaped text: each renderer escapes for its own format. `bold` marks cells
(row, column) such as the best value of a column; `rules_after` puts a rule under a body row.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

MISSING = "n/a"


@dataclass
class TextTable:
    columns: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    bold: set[tuple[int, int]] = field(default_factory=set)
    rules_after: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        width = len(self.columns)
        if len(self.numeric) != width or any(len(r) != width for r in self.rows):
            raise ValueError(f"every row needs {width} cells")


def fmt(value: float | None, digits: int = 4) -> str:
    """A number with `digits` significant digits; missing values as n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{digits}g}"


def fmt_spread(value: float | None, std: float | None, digits: int = 4) -> str:
    if std is None or (isinstance(std, float) and math.isnan(std)) or fmt(value) == MISSING:
        return fmt(value, digits)
    return f"{fmt(value, digits)} ± {std:.2g}"


def to_markdown(table: TextTable) -> str:
    def cell(i: int, j: int, text: str) -> str:
        text = text.replace("|", "\\|").replace("\n", " ")
        return f"**{text}**" if (i, j) in table.bold and text and text != MISSING else text

    align = ["---:" if n else "---" for n in table.numeric]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in table.columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(i, j, c) for j, c in enumerate(row)) + " |" for i, row in enumerate(table.rows)]
    return "\n".join(lines)


def to_html(table: TextTable, css_class: str = "board") -> str:
    num = ' class="num"'

    def td(i: int, j: int, text: str) -> str:
        cls = num if table.numeric[j] else ""
        body = html.escape(text)
        if (i, j) in table.bold and text and text != MISSING:
            body = f"<strong>{body}</strong>"
        return f"<td{cls}>{body}</td>"

    head = "".join(f"<th{num if n else ''}>{html.escape(c)}</th>" for c, n in zip(table.columns, table.numeric))
    body = []
    for i, row in enumerate(table.rows):
        cls = ' class="rule"' if i in table.rules_after else ""
        body.append(f"<tr{cls}>" + "".join(td(i, j, c) for j, c in enumerate(row)) + "</tr>")
    return (f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body)
            + "\n</tbody></table>")
