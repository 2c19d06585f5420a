"""The static per-run HTML report: results/<run>/report.html, opened from disk, no server, no script.

Sections: leaderboard; plots as inline SVG (each metric vs edit strength per method, the oracle flip rate
against preservation over a strength sweep per method and attribute, runtime per method, disentanglement
matrices as heatmaps); image grids per (method, model, suite) with rows =
samples (item, seed) and columns = the original then each strength, sorted; the run's manifest and
config. Images are linked by their relative paths under the run directory, never inlined.
"""
from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from harness.reports import curves
from harness.reports.data import RunData, load_run
from harness.reports.render import to_html
from harness.reports.svg import PALETTE, Series, bar_chart, heatmap, line_chart
from harness.reports.tables import PREPARE, RUNTIME, Column, Leaderboard, build_leaderboard

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; } th { background: #f3f3f3; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.rule td { border-bottom: 2px solid #999; }
.notes { font-size: 12px; color: #555; } .plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plots svg { border: 1px solid #eee; }
table.grid td { text-align: center; vertical-align: top; } table.grid img { width: 96px; height: 96px;
  image-rendering: pixelated; display: block; margin: auto; object-fit: contain; }
table.grid td.sample { text-align: left; font-size: 12px; max-width: 180px; }
.failed { color: #b00; font-size: 11px; width: 96px; height: 96px; display: flex; align-items: center;
  justify-content: center; background: #fee; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 12px; }
nav a { margin-right: 1em; }
"""


def _series_name(key: tuple, keys: list[str], varying: set[str]) -> str:
    return " · ".join(str(v) for k, v in zip(keys, key) if k == "method" or k in varying)


def _colors(run: RunData) -> dict[tuple, str]:
    """One colour per (method, model, suite) for every chart of the page."""
    keys = sorted(set(zip(run.rows["method"], run.rows["model"], run.rows["suite"])))
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def _matching(frame: pd.DataFrame, column: Column) -> pd.DataFrame:
    sub = frame[frame["metric"] == column.metric]
    for field, value in column.provenance:
        if field in sub.columns:
            sub = sub[sub[field].astype("string").fillna("") == value]
    return sub


def _metric_plots(run: RunData, board: Leaderboard) -> list[str]:
    keys = ["method", "model", "suite"]
    varying = {k for k in ("model", "suite") if run.rows[k].nunique() > 1}
    colors = _colors(run)
    svgs = []
    for col in board.columns:
        if col.metric in (RUNTIME, PREPARE) or not col.spread:  # one value per row (e.g. the trade-off summary)
            continue
        per_seed = col.spread == "seeds"
        src = _matching(run.per_image if per_seed else run.aggregates, col)
        if src.empty:
            continue
        series = []
        for key, g in src.groupby(keys, sort=True):
            points = []
            for s, gs in g.groupby("strength", sort=True):
                if per_seed:
                    v = gs.groupby("seed")["value"].mean()
                else:
                    v = gs.groupby("attribute", dropna=False)["value"].mean()
                v = v.dropna()
                points.append((float(s), float(v.mean()) if len(v) else np.nan,
                               float(v.std(ddof=1)) if len(v) > 1 else np.nan))
            xs, ys, errs = (list(column) for column in zip(*points))
            series.append(Series(_series_name(key, keys, varying), xs, ys, errs, color=colors.get(tuple(key))))
        spread = "mean ± std over seeds" if per_seed else "mean over attributes"
        svgs.append(line_chart(series, f"{col.name} vs edit strength", "edit strength", f"{col.name} ({spread})"))
    return svgs


RATE_TICKS = [0.0, 0.25, 0.5, 0.75, 1.0]


def _tradeoff_plots(run: RunData) -> list[str]:
    """Flip rate against preservation, one point per strength, per (model, suite): all attributes pooled,
    then each attribute; one line per method (curves.py defines the points)."""
    p = run.per_image
    if p.empty:
        return []
    keys = ["method", "model", "suite"]
    colors = _colors(run)
    svgs = []
    pooled = curves.curve_points(p, keys)
    by_attr = curves.curve_points(p, keys + ["attribute"])
    for (model, suite), g in pooled.groupby(["model", "suite"], sort=True):
        panels = [("all attributes", g)] + [
            (f"attribute {a}", ga) for a, ga in by_attr[(by_attr["model"] == model) & (by_attr["suite"] == suite)]
            .groupby("attribute", sort=True)]
        for label, frame in panels:
            series = []
            for method, gm in frame.groupby("method", sort=True):
                series.append(Series(str(method), list(gm["preservation"]), list(gm["flip"]),
                                     color=colors.get((method, model, suite)),
                                     labels=[f"strength {s:g}, {n} eligible" for s, n in
                                             zip(gm["strength"], gm["n_eligible"])]))
            svgs.append(line_chart(series, f"flip vs preservation: {model} · {suite} · {label}",
                                   "oracle_preservation (one point per strength)", "oracle_flip",
                                   x_ticks=RATE_TICKS, y_ticks=RATE_TICKS))
    return svgs


def _runtime_plot(run: RunData, board: Leaderboard) -> str | None:
    cols = [c for c in board.columns if c.metric == RUNTIME]
    if not cols or board.frame.empty:
        return None
    colors = _colors(run)
    labels, values, errors, fills = [], [], [], []
    for c in cols:
        for _, r in board.frame.iterrows():
            tag = " · ".join(str(r[k]) for k in board.keys if k != "suite")
            labels.append(tag + (f" [{dict(c.provenance).get('device', '')}]" if len(cols) > 1 else ""))
            values.append(float(r[c.name]))
            errors.append(float(r[f"{c.name}_std"]))
            fills.append(colors.get((r["method"], r["model"], r["suite"]), PALETTE[0]))
    return bar_chart(labels, values, errors, "Runtime per edited image", "seconds (mean ± std over seeds)",
                     colors=fills)


ATTRIBUTE_ORDER = ("smile", "glasses", "age", "gender", "hat", "pose", "female", "male", "old", "young")


def _ordered(values: Any) -> list[str]:
    """The papers' attribute order first (Table I: smile, glasses, age, gender, hat), then alphabetical."""
    return sorted(dict.fromkeys(map(str, values)),
                  key=lambda a: (ATTRIBUTE_ORDER.index(a) if a in ATTRIBUTE_ORDER else len(ATTRIBUTE_ORDER), a))


def _oracle_heatmaps(run: RunData) -> list[str]:
    """Oracle matrices: rows = applied edit, columns = scene factor, value = share of edits that changed it."""
    p = run.per_image
    if p.empty:
        return []
    p = p[p["metric"].astype(str).str.startswith("oracle_changed:")]
    svgs = []
    for (method, model, _suite, strength), g in p.groupby(["method", "model", "suite", "strength"], sort=True):
        cells = g.assign(factor=g["metric"].str.split(":").str[1]).groupby(["attribute", "factor"], sort=False)[
            "value"].mean()
        edits = _ordered(g["attribute"])
        factors = list(dict.fromkeys(g["metric"].str.split(":").str[1]))
        matrix = [[cells.get((e, f)) for f in factors] for e in edits]
        svgs.append(heatmap(matrix, edits, factors, f"oracle changed: {method} · {model} · strength {strength:g}",
                            row_title="edit ↓", col_title="factor changed →"))
    return svgs


def _heatmaps(run: RunData) -> list[str]:
    a = run.aggregates
    if a.empty or "measured_attribute" not in a.columns:
        return _oracle_heatmaps(run)
    d = a[a["metric"].astype(str).str.startswith("disentanglement") & a["measured_attribute"].notna()]
    svgs = _oracle_heatmaps(run)
    for (metric, method, model, _suite, strength), g in d.groupby(["metric", "method", "model", "suite", "strength"],
                                                                  sort=True):
        edits, measured = _ordered(g["attribute"]), _ordered(g["measured_attribute"])
        cells = {(e, m): v for e, m, v in zip(g["attribute"], g["measured_attribute"], g["value"])}
        matrix = [[cells.get((e, m)) for m in measured] for e in edits]
        svgs.append(heatmap(matrix, edits, measured, f"{metric}: {method} · {model} · strength {strength:g}",
                            row_title="edit ↓", col_title="measured effect →"))
    return svgs


def _img(run: RunData, rel: Any, alt: str) -> str:
    if not isinstance(rel, str) or not (run.root / rel).is_file():
        return '<div class="failed">image missing</div>'
    return f'<img src="{escape(quote(rel))}" alt="{escape(alt)}" title="{escape(alt)}">'


def _grids(run: RunData, max_samples: int) -> list[str]:
    out = []
    rows = run.rows
    for (method, model, suite), g in rows.groupby(["method", "model", "suite"], sort=True):
        strengths = sorted({float(s) for s in g["strength"]})
        samples = sorted({(int(s), str(i)) for s, i in zip(g["seed"], g["item_id"])})
        shown = samples[:max_samples]
        head = "".join(f'<th>strength {s:g}</th>' for s in strengths)
        body = []
        for seed, item in shown:
            units = g[(g["seed"] == seed) & (g["item_id"] == item)]
            first = units.iloc[0]
            originals = units[units["status"] == "done"]["original_path"]
            prompt = f"{first['prompt']} → {first['target_prompt']}"
            tds = [f'<td class="sample"><b>{escape(item)}</b> seed {seed}<br>'
                   f'{escape(str(first["attribute"]))}<br><small>{escape(prompt)}</small></td>',
                   f"<td>{_img(run, originals.iloc[0] if len(originals) else None, f'{item} seed {seed} original')}"
                   "</td>"]
            for s in strengths:
                u = units[units["strength"].astype(float) == s]
                if u.empty:
                    tds.append("<td></td>")
                elif u.iloc[0]["status"] != "done":
                    err = escape(str(u.iloc[0]["error"] or "failed"))
                    tds.append(f'<td><div class="failed" title="{err}">failed</div></td>')
                else:
                    tds.append(f"<td>{_img(run, u.iloc[0]['edited_path'], f'{item} seed {seed} strength {s:g}')}</td>")
            body.append("<tr>" + "".join(tds) + "</tr>")
        more = f", showing {len(shown)}" if len(shown) < len(samples) else ""
        out.append(f'<h3 id="grid-{escape(quote(f"{method}-{model}-{suite}"))}">{escape(method)} · {escape(model)} · '
                   f"{escape(suite)}</h3><p class=\"notes\">{len(samples)} samples (item, seed){more}; "
                   "rows = samples, columns = original → edited at each strength.</p>"
                   f'<table class="grid"><thead><tr><th>sample</th><th>original</th>{head}</tr></thead>'
                   f"<tbody>{''.join(body)}</tbody></table>")
    return out


def render_html(run: RunData, board: Leaderboard | None = None, max_samples: int = 8) -> str:
    board = board or build_leaderboard([run])
    m = run.manifest
    git = m.get("git", {}) or {}
    summary = (f"{len(run.rows)} units ({int((run.rows['status'] == 'done').sum())} done); created "
               f"{escape(str(m.get('created', '?')))}; git {escape(str(git.get('commit') or '?'))[:12]}"
               f"{' (dirty)' if git.get('dirty') else ''}")
    plots = _metric_plots(run, board)
    runtime = _runtime_plot(run, board)
    heat = _heatmaps(run)
    tradeoff = _tradeoff_plots(run)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<link rel="icon" href="data:,">',
        f"<title>Run {escape(run.name)}: latent-edit report</title><style>{STYLE}</style></head><body>",
        f"<h1>Run <code>{escape(run.name)}</code></h1><p>{summary}</p>",
        '<nav><a href="#leaderboard">Leaderboard</a><a href="#plots">Plots</a><a href="#images">Images</a>'
        '<a href="#manifest">Manifest</a></nav>',
        '<h2 id="leaderboard">Leaderboard</h2>', to_html(board.text_table()),
        '<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in board.notes) + "</ul>",
        '<h2 id="plots">Plots</h2>',
        '<h3>Metrics vs edit strength</h3><div class="plots">' + ("".join(plots) or "<p>no metric values</p>")
        + "</div>",
        '<h3>Flip rate vs preservation (strength sweep)</h3><p class="notes">Oracle flip rate (eligible units: '
        "original not already at the target) against oracle preservation; each point is one strength (hover for "
        "it); up and to the right is better.</p><div class=\"plots\">"
        + ("".join(tradeoff) or "<p>no oracle_flip / oracle_preservation values</p>") + "</div>",
        '<h3>Runtime</h3><div class="plots">' + (runtime or "<p>no runtime values</p>") + "</div>",
        '<h3>Disentanglement matrices</h3><div class="plots">'
        + ("".join(heat) or "<p>no disentanglement aggregates (metrics.disentanglement) or oracle matrices</p>")
        + "</div>",
        '<h2 id="images">Images</h2>', *(_grids(run, max_samples) or ["<p>no units</p>"]),
        '<h2 id="manifest">Manifest</h2>', f"<pre>{escape(json.dumps(m, indent=2, sort_keys=True), quote=False)}</pre>",
        "<details><summary>config.yaml</summary>"
        f"<pre>{escape((run.root / 'config.yaml').read_text(), quote=False)}</pre></details>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_html_report(run_dir: str | Path, sort: str | None = None, max_samples: int = 8) -> Path:
    run = load_run(run_dir)
    path = run.root / "report.html"
    path.write_text(render_html(run, build_leaderboard([run], sort), max_samples))
    return path
