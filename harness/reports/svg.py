"""Small inline-SVG charts with no plotting library: line chart with error bars, bar chart, heatmap.

Every function returns one self-contained <svg> element (text escaped, fixed size, a <title>).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Sequence, TypeGuard

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
FONT = 'font-family="sans-serif" font-size="11"'


@dataclass
class Series:
    name: str
    x: Sequence[float]
    y: Sequence[float]
    err: Sequence[float] | None = None
    color: str | None = None  # default: the palette by position
    labels: Sequence[str] | None = None  # per point, shown in its tooltip (e.g. the strength behind it)


def _ok(v: float | None) -> TypeGuard[float]:  # narrows: after `if _ok(v)`, v is a number
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _n(v: float) -> str:
    return f"{v:.1f}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks: list[float] = []
    t = start
    while t <= hi + step * 0.5 and len(ticks) < 50:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _open(width: int, height: int, title: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
            f"<title>{escape(title)}</title>",
            f'<rect width="{width}" height="{height}" fill="#fff"/>',
            f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" {FONT} font-weight="bold">{escape(title)}</text>']


def _axes(out: list[str], box: tuple[float, float, float, float], yticks: list[float], y_of, x_label: str,
          y_label: str) -> None:
    left, top, right, bottom = box
    out.append(f'<line x1="{_n(left)}" y1="{_n(bottom)}" x2="{_n(right)}" y2="{_n(bottom)}" stroke="#333"/>')
    out.append(f'<line x1="{_n(left)}" y1="{_n(top)}" x2="{_n(left)}" y2="{_n(bottom)}" stroke="#333"/>')
    for t in yticks:
        y = y_of(t)
        out.append(f'<line x1="{_n(left)}" y1="{_n(y)}" x2="{_n(right)}" y2="{_n(y)}" stroke="#eee"/>')
        out.append(f'<text x="{_n(left - 4)}" y="{_n(y + 4)}" text-anchor="end" {FONT}>{t:.3g}</text>')
    out.append(f'<text x="{_n((left + right) / 2)}" y="{_n(bottom + 34)}" text-anchor="middle" {FONT}>'
               f"{escape(x_label)}</text>")
    out.append(f'<text transform="translate(14 {_n((top + bottom) / 2)}) rotate(-90)" text-anchor="middle" {FONT}>'
               f"{escape(y_label)}</text>")


def _errors(s: Series) -> list[float | None]:
    """The series' error bars, or None for each point."""
    return list(s.err) if s.err is not None else [None] * len(s.x)


def line_chart(series: Sequence[Series], title: str, x_label: str, y_label: str, width: int = 520,
               height: int = 280, x_ticks: Sequence[float] | None = None,
               y_ticks: Sequence[float] | None = None) -> str:
    """One line per series (points sorted by x), error bars where `err` is given, legend on the right.

    x_ticks / y_ticks fix the axes (e.g. [0, 0.25, ..., 1] for rates); default: from the data.
    """
    pts = [(x, y, e) for s in series for x, y, e in zip(s.x, s.y, _errors(s)) if _ok(y)]
    out = _open(width, height, title)
    if not pts:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" {FONT}>no values</text></svg>')
        return "\n".join(out)
    ys = [y for _, y, _ in pts] + [y + e for _, y, e in pts if _ok(e)] + [y - e for _, y, e in pts if _ok(e)]
    yticks = list(y_ticks) if y_ticks else nice_ticks(min(ys), max(ys))
    xs = sorted({x for x, _, _ in pts})
    xticks = list(x_ticks) if x_ticks else (xs if len(xs) <= 8 else nice_ticks(xs[0], xs[-1]))
    x_lo, x_hi = min(xticks[0], xs[0]), max(xticks[-1], xs[-1])
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    box = (60.0, 28.0, width - 200.0, height - 48.0)
    left, top, right, bottom = box

    def x_of(v: float) -> float:
        return left + 10 + (v - x_lo) / (x_hi - x_lo) * (right - left - 20)

    def y_of(v: float) -> float:
        return bottom - (v - yticks[0]) / ((yticks[-1] - yticks[0]) or 1.0) * (bottom - top)

    _axes(out, box, yticks, y_of, x_label, y_label)
    for t in xticks:
        out.append(f'<text x="{_n(x_of(t))}" y="{_n(bottom + 15)}" text-anchor="middle" {FONT}>{t:.3g}</text>')
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        tips = s.labels or [""] * len(s.x)
        p = sorted((x, y, e, tip) for x, y, e, tip in zip(s.x, s.y, _errors(s), tips) if _ok(y))
        if len(p) > 1:
            path = " ".join(f"{_n(x_of(x))},{_n(y_of(y))}" for x, y, _, _ in p)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y, e, tip in p:
            if _ok(e) and e > 0:
                out.append(f'<line x1="{_n(x_of(x))}" y1="{_n(y_of(y - e))}" x2="{_n(x_of(x))}" '
                           f'y2="{_n(y_of(y + e))}" stroke="{color}"/>')
            out.append(f'<circle cx="{_n(x_of(x))}" cy="{_n(y_of(y))}" r="3.5" fill="{color}">'
                       f"<title>{escape(s.name)}: {x:.3g} → {y:.4g}{escape(' (' + tip + ')') if tip else ''}"
                       "</title></circle>")
        ly = top + 6 + 16 * i
        out.append(f'<rect x="{_n(right + 12)}" y="{_n(ly - 8)}" width="10" height="10" fill="{color}"/>')
        name = s.name if len(s.name) <= 30 else s.name[:29] + "…"
        out.append(f'<text x="{_n(right + 26)}" y="{_n(ly + 1)}" {FONT}>{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(labels: Sequence[str], values: Sequence[float], errors: Sequence[float] | None, title: str,
              y_label: str, width: int | None = None, height: int = 300,
              colors: Sequence[str] | None = None) -> str:
    """Vertical bars from zero, error bars where given; labels rotated under the axis."""
    width = width or max(300, 70 + 46 * len(labels))
    out = _open(width, height, title)
    vals = [v for v in values if _ok(v)]
    if not vals:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" {FONT}>no values</text></svg>')
        return "\n".join(out)
    errs: list[float | None] = list(errors) if errors is not None else [None] * len(values)
    tops = [v + (e if _ok(e) else 0) for v, e in zip(values, errs) if _ok(v)]
    yticks = nice_ticks(min(0.0, min(vals)), max(tops))
    box = (60.0, 28.0, width - 10.0, height - 110.0)
    left, top, right, bottom = box

    def y_of(v: float) -> float:
        return bottom - (v - yticks[0]) / ((yticks[-1] - yticks[0]) or 1.0) * (bottom - top)

    _axes(out, box, yticks, y_of, "", y_label)
    slot = (right - left) / len(labels)
    for i, (lab, v, e) in enumerate(zip(labels, values, errs)):
        cx = left + slot * (i + 0.5)
        if _ok(v):
            y0, y1 = y_of(0.0), y_of(v)
            out.append(f'<rect x="{_n(cx - slot * 0.35)}" y="{_n(min(y0, y1))}" width="{_n(slot * 0.7)}" '
                       f'height="{_n(abs(y0 - y1))}" fill="{colors[i] if colors else PALETTE[i % len(PALETTE)]}">'
                       f"<title>{escape(lab)}: {v:.4g}</title></rect>")
            if _ok(e) and e > 0:
                out.append(f'<line x1="{_n(cx)}" y1="{_n(y_of(v - e))}" x2="{_n(cx)}" y2="{_n(y_of(v + e))}" '
                           'stroke="#000"/>')
        out.append(f'<text transform="translate({_n(cx + 4)} {_n(bottom + 8)}) rotate(-40)" text-anchor="end" '
                   f"{FONT}>{escape(lab[:28])}</text>")
    out.append("</svg>")
    return "\n".join(out)


def _blend(t: float, negative: bool) -> str:
    """White -> blue (positive) or white -> red (negative) for t in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    end = (178, 24, 43) if negative else (8, 81, 156)
    r, g, b = (round(255 + (c - 255) * t) for c in end)
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(matrix: Sequence[Sequence[float | None]], row_labels: Sequence[str], col_labels: Sequence[str],
            title: str, row_title: str = "", col_title: str = "", cell: int = 52) -> str:
    """Annotated heatmap; colour scale 0..max|v| (blue positive, red negative), missing cells hatched grey."""
    left, top = 90, 58
    width = max(left + cell * len(col_labels) + 20, 260, int(len(title) * 6.6) + 20)
    height = top + cell * len(row_labels) + 20
    out = _open(width, height, title)
    vals = [abs(v) for row in matrix for v in row if _ok(v)]
    vmax = max(vals) if vals and max(vals) > 0 else 1.0
    if col_title:
        out.append(f'<text x="{left + cell * len(col_labels) / 2:.1f}" y="32" text-anchor="middle" {FONT}>'
                   f"{escape(col_title)}</text>")
    if row_title:
        out.append(f'<text x="6" y="{top - 6}" {FONT}>{escape(row_title)}</text>')
    for j, c in enumerate(col_labels):
        out.append(f'<text x="{left + cell * (j + 0.5):.1f}" y="{top - 6}" text-anchor="middle" {FONT}>'
                   f"{escape(str(c))}</text>")
    for i, (r, row) in enumerate(zip(row_labels, matrix)):
        y = top + cell * i
        out.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4:.1f}" text-anchor="end" {FONT}>{escape(str(r))}</text>')
        for j, v in enumerate(row):
            x = left + cell * j
            fill = _blend(abs(v) / vmax, v < 0) if _ok(v) else "#ddd"
            label = f"{v:.2g}" if _ok(v) else "–"
            ink = "#fff" if _ok(v) and abs(v) / vmax > 0.6 else "#000"
            out.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#fff">'
                       f"<title>{escape(str(r))} → {escape(str(col_labels[j]))}: {label}</title></rect>")
            out.append(f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" text-anchor="middle" fill="{ink}" '
                       f"{FONT}>{label}</text>")
    out.append("</svg>")
    return "\n".join(out)
