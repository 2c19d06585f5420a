"""The papers' tables from a run, printed beside the published numbers (configs/tables/published.yaml).

- svd_table1: SVD paper Table 1 — FID / CLIP / LPIPS per attribute (female, male, old, young) and
  runtime, rows `sd`, `park`, `avi` (registered method names; every label of one is shown).
- hspace_table1: h-space paper Table I — the 5 x 5 CLIP disentanglement matrix of `supervised`,
  original directions (options.disentangle_from null; the method's own label or `--label`) and the label
  whose options are the same but for a non-null disentangle_from, so that the projection is the only
  difference between the two (a projected label with other options too is shown, never compared).
Each table names what is missing (units, metrics), prints what it can, and lists the settings of the
run that differ from the paper's: model, sample count, sampler, resolution and metric backbones,
read from the stored rows, config and metric provenance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from harness.reports.data import RunData, method_options
from harness.reports.latex import to_latex
from harness.reports.render import MISSING, TextTable, fmt, to_markdown

PUBLISHED = Path(__file__).resolve().parents[2] / "configs" / "tables" / "published.yaml"
TABLES = ("svd", "hspace")
METRIC_LABEL = {"fid": "FID", "clip_score": "CLIP", "lpips": "LPIPS"}


@dataclass
class PaperTable:
    title: str
    context: str  # which run, model, suite, strength
    tables: list[tuple[str, TextTable]]  # (caption, table)
    cells: pd.DataFrame  # tidy numbers: block, method, row, column, ours, paper
    missing: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    same: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_published(path: Path = PUBLISHED) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _num(v: float | None, digits: int = 4) -> str:
    return fmt(None if v is None else float(v), digits)


def _diff(ours: float | None, paper: float | None) -> str:
    if ours is None or paper is None or math.isnan(ours):
        return MISSING
    return f"{round(ours - paper, 9):+.3g}".replace("-", "−")


def _pick_strength(strengths: Sequence[float], wanted: float | None) -> float | None:
    values = sorted({float(s) for s in strengths})
    if not values:
        return None
    if wanted is not None:
        return float(wanted) if float(wanted) in values else None
    return min(values, key=lambda s: (abs(s - 1.0), -s))


def _strength_note(label: str, strengths: Sequence[float], chosen: float | None, wanted: float | None) -> str | None:
    values = sorted({float(s) for s in strengths})
    if wanted is not None and chosen is None and values:
        return f"no `{label}` units at strength {wanted:g} (present: {', '.join(f'{s:g}' for s in values)})"
    if len(values) > 1:
        return (f"`{label}`: strengths {', '.join(f'{s:g}' for s in values)} present; {chosen:g} shown "
                "(choose with --strength)")
    return None


def _matches(ours: str, setting: dict[str, Any], exact: bool) -> bool:
    o = str(ours).lower().rstrip("/")
    tokens = [str(t).lower() for t in setting.get("match", [])]
    if exact:
        return any(o == t or o.endswith("/" + t) for t in tokens)
    return any(t in o for t in tokens)


class _Settings:
    """Collects 'setting: ours vs paper' lines into differences and sames."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.differences: list[str] = []
        self.same: list[str] = []

    def compare(self, key: str, ours: Any, same: bool | None = None) -> None:
        paper = self.spec.get(key, {})
        if ours is None or ours == "":
            self.differences.append(f"{key}: not recorded in this run; paper: {paper.get('paper', 'n/a')}")
            return
        if same is None:
            p = paper.get("paper")
            same = isinstance(p, (int, float)) and _close(ours, p)
        line = f"{key}: ours {ours}; paper {paper.get('paper', 'not stated')}"
        (self.same if same else self.differences).append(line)


def _close(ours: Any, paper: float) -> bool:
    try:
        return math.isclose(float(ours), float(paper))
    except (TypeError, ValueError):
        return False


def _resolution(run: RunData, done: pd.DataFrame) -> str | None:
    from PIL import Image

    sizes = set()
    for rel in list(done["edited_path"].dropna())[:3]:
        path = run.root / str(rel)
        if path.is_file():
            with Image.open(path) as im:
                sizes.add(f"{im.width}x{im.height}")
    return ", ".join(sorted(sizes)) or None


def _common_settings(s: _Settings, run: RunData, model: str, done: pd.DataFrame, aggs: pd.DataFrame,
                     metrics: Sequence[str], sampler_keys: Sequence[str]) -> None:
    s.compare("model", f"`{model}`", _matches(model, s.spec.get("model", {}), exact=True))
    sampler = run.config.get("sampler", {}) or {}
    for key in sampler_keys:
        s.compare(key, sampler.get(key))
    if "resolution" in s.spec:
        res = _resolution(run, done)
        paper = s.spec["resolution"]["paper"]
        s.compare("resolution", res, res == f"{paper}x{paper}")
    for metric in metrics:
        part = aggs[aggs["metric"] == metric] if len(aggs) else aggs
        if part.empty:
            continue
        backs = sorted({f"{b} ({i})" for b, i in zip(part["backbone"].astype(str), part["implementation"].astype(str))})
        s.compare(metric, "; ".join(backs), all(_matches(b, s.spec.get(metric, {}), exact=False) for b in backs))


def _aggs_for(run: RunData, model: str | None, suite: str | None) -> pd.DataFrame:
    a = run.aggregates
    if a.empty or "metric" not in a.columns:
        return pd.DataFrame(columns=["method", "model", "suite", "attribute", "strength", "metric", "value"])
    return a[(a["model"] == model) & (a["suite"] == suite)]


def _present(run: RunData, names: list[str]) -> str:
    """What the run does hold for these methods, e.g. ' (it has `sd` for attributes age, smile)'."""
    rows = run.rows[run.rows["method_name"].isin(names)]
    if rows.empty:
        return ""
    held = [f"`{m}` for attributes {', '.join(sorted(set(g['attribute'].astype(str))))}"
            for m, g in rows.groupby("method", sort=True)]
    return f" (it has {'; '.join(held)})"


def _combos(rows: pd.DataFrame) -> list[tuple[str | None, str | None]]:
    return sorted(set(zip(rows["model"], rows["suite"]))) or [(None, None)]


# -- SVD paper, Table 1 ---------------------------------------------------------------------------
def svd_table1(run: RunData, spec: dict[str, Any], strength: float | None = None) -> list[PaperTable]:
    rows = run.rows
    rel = rows[rows["method_name"].isin(list(spec["methods"])) & rows["attribute"].isin(spec["attributes"])]
    return [_svd_one(run, spec, model, suite, strength) for model, suite in _combos(rel)]


def _svd_one(run: RunData, spec: dict[str, Any], model: str | None, suite: str | None,
             strength: float | None) -> PaperTable:
    attrs, metrics = spec["attributes"], spec["metrics"]
    rows = run.rows[(run.rows["model"] == model) & (run.rows["suite"] == suite)] if model else run.rows.iloc[:0]
    aggs = _aggs_for(run, model, suite) if model else _aggs_for(run, "", "")
    missing: list[str] = []
    notes: list[str] = []
    cells: list[dict[str, Any]] = []
    body: list[Any] = []
    rules: set[Any] = set()
    if model is None:
        missing.append(f"no rows of methods {', '.join(f'`{m}`' for m in spec['methods'])} for attributes "
                       f"{', '.join(attrs)} in run `{run.name}`{_present(run, list(spec['methods']))}: "
                       "only the published numbers are shown")
    elif run.aggregates.empty:
        missing.append("no metrics/aggregates.parquet in the run: run `harness metrics RUN` for fid, clip_score, lpips")
    columns = ["Method", "Source"] + [f"{a.capitalize()} ({' / '.join(METRIC_LABEL[m] for m in metrics)})"
                                      for a in attrs] + ["Runtime (s/img)"]
    for name, pub in spec["methods"].items():
        body.append([pub["label"], "paper"] + [" / ".join(str(v) for v in pub[a]) for a in attrs]
                    + [f"{pub['runtime_s']:g}"])
        labels = sorted(set(rows.loc[rows["method_name"] == name, "method"]))
        if model is not None and not labels:
            missing.append(f"no `{name}` rows")
        for label in labels:
            lab = rows[(rows["method"] == label) & rows["attribute"].isin(attrs)]
            done = lab[lab["status"] == "done"]
            chosen = _pick_strength(done["strength"], strength)
            note = _strength_note(label, done["strength"], chosen, strength)
            if note:
                (missing if chosen is None else notes).append(note)
            ours_cells, diff_cells = [], []
            for a in attrs:
                ar = lab[lab["attribute"] == a]
                if ar.empty:
                    missing.append(f"no `{label}` rows for attribute {a}")
                elif not (ar["status"] == "done").any():
                    missing.append(f"`{label}`/{a}: {len(ar)} units, none done")
                vals = []
                for m, paper in zip(metrics, pub[a]):
                    sel = aggs[(aggs["method"] == label) & (aggs["attribute"] == a) & (aggs["metric"] == m)
                               & (aggs["strength"] == chosen)]["value"].dropna() if chosen is not None else pd.Series()
                    if not ar.empty and len(sel) == 0 and not run.aggregates.empty:
                        missing.append(f"no {m} aggregates for {label}/{a}")
                    if len(sel) > 1:
                        notes.append(f"{m} for {label}/{a}: {len(sel)} provenances stored; the first is shown")
                    v = float(sel.iloc[0]) if len(sel) else None
                    vals.append(v)
                    cells.append({"block": "table1", "method": label, "row": a, "column": m, "ours": v,
                                  "paper": float(paper)})
                ours_cells.append(" / ".join(_num(v) for v in vals))
                diff_cells.append(" / ".join(_diff(v, float(p)) for v, p in zip(vals, pub[a])))
            rt = done["edit_seconds"].astype(np.float64).dropna()
            runtime = float(rt.mean()) if len(rt) else None
            if runtime is None:
                missing.append(f"no runtime for `{label}` (no done units)")
            cells.append({"block": "table1", "method": label, "row": "runtime", "column": "edit_seconds",
                          "ours": runtime, "paper": float(pub["runtime_s"])})
            tag = "ours" if label == name else f"ours ({label})"
            body.append(["", tag] + ours_cells + [_num(runtime, 3)])
            body.append(["", f"{tag} − paper"] + diff_cells + [_diff(runtime, pub["runtime_s"])])
        rules.add(len(body) - 1)
    table = TextTable(columns, body, [False, False] + [True] * (len(attrs) + 1), rules_after=rules)
    s = _Settings(spec["settings"])
    if model is not None:
        done = rows[rows["method_name"].isin(list(spec["methods"])) & rows["attribute"].isin(attrs)
                    & (rows["status"] == "done")]
        _common_settings(s, run, model, done, aggs, metrics, ["num_steps", "guidance_scale"])
        n = done.groupby(["method", "attribute"]).size()
        s.compare("samples", f"{n.min()}–{n.max()} done units per method and attribute" if len(n) else None,
                  False)
        devices = sorted(set(done["device"].dropna().astype(str)))
        s.compare("runtime", f"mean edit seconds per image (one-off prepare excluded) on {'; '.join(devices)}",
                  False)
    context = f"run `{run.name}`" + (f", model `{model}`, suite `{suite}`" if model else "")
    return PaperTable(spec["title"], context, [("", table)], pd.DataFrame(cells), missing, s.differences,
                      s.same, notes + list(spec.get("notes", [])))


# -- h-space paper, Table I -----------------------------------------------------------------------
def hspace_table1(run: RunData, spec: dict[str, Any], strength: float | None = None,
                  label: str | None = None) -> list[PaperTable]:
    rows = run.rows
    rel = rows[(rows["method_name"] == spec["method"]) & rows["attribute"].isin(spec["attributes"])]
    return [_hspace_one(run, spec, model, suite, strength, label) for model, suite in _combos(rel)]


def _disentangled(options: dict[str, Any]) -> bool:
    return options.get("disentangle_from") not in (None, [], {}, "")


def _besides_projection(options: dict[str, Any]) -> dict[str, Any]:
    """A label's options without disentangle_from: two labels are a projection pair when these are equal."""
    return {k: v for k, v in options.items() if k != "disentangle_from"}


def _pick_labels(name: str, options: dict[str, dict[str, Any]], wanted: str | None,
                 missing: list[str], notes: list[str]) -> tuple[str | None, str | None, bool]:
    """(original label, disentangled label, paired): the original is `wanted` (default: the method's own name,
    else the first label with null disentangle_from); the disentangled one is the label whose options equal the
    original's but for disentangle_from, so the projection is the only difference between the two rows.
    `paired` is False when no such label exists (another disentangled label is shown, and not compared)."""
    plain = sorted((lab for lab, o in options.items() if not _disentangled(o)), key=lambda lab: (lab != name, lab))
    projected = sorted(lab for lab, o in options.items() if _disentangled(o))
    if wanted is not None:
        if wanted not in options or _disentangled(options[wanted]):
            missing.append(f"--label {wanted}: no `{name}` label of that name with null options.disentangle_from "
                           f"(have: {', '.join(plain) or 'none'})")
            return None, None, False
        original: str | None = wanted
    else:
        original = plain[0] if plain else None
        if len(plain) > 1:
            notes.append(f"original directions: labels {', '.join(plain)}; `{original}` shown (choose with --label)")
    partners = [lab for lab in projected if original is not None
                and _besides_projection(options[lab]) == _besides_projection(options[original])]
    if partners:
        return original, partners[0], True
    if projected:
        notes.append(f"no disentangled label shares `{original}`'s other options; `{projected[0]}` shown, but the "
                     "two differ in more than the projection, so they are not compared")
    return original, (projected[0] if projected else None), False


def _hspace_one(run: RunData, spec: dict[str, Any], model: str | None, suite: str | None,
                strength: float | None, wanted: str | None = None) -> PaperTable:
    name, attrs = spec["method"], spec["attributes"]
    rows = run.rows[(run.rows["model"] == model) & (run.rows["suite"] == suite)] if model else run.rows.iloc[:0]
    aggs = _aggs_for(run, model, suite) if model else _aggs_for(run, "", "")
    mine = rows[rows["method_name"] == name]
    options = method_options(mine) if len(mine) else {}
    missing, notes, cells, tables = [], [], [], []
    if model is None:
        missing.append(f"no `{name}` rows for attributes {', '.join(attrs)} in run `{run.name}`"
                       f"{_present(run, [name])}: only the published numbers are shown")
    metric = "disentanglement"
    if len(aggs) and not (aggs["metric"] == metric).any() and (aggs["metric"] == "disentanglement_signed").any():
        metric = "disentanglement_signed"
        notes.append("only signed disentanglement aggregates are stored (metrics.disentanglement.signed=true): "
                     "shown, but the paper's reading is the absolute change")
    elif model is not None and not (len(aggs) and (aggs["metric"] == metric).any()):
        missing.append("no disentanglement aggregates in the run (enable metrics.disentanglement and run "
                       "`harness metrics RUN`)")
    used: list[pd.DataFrame] = []
    oracle: dict[str, pd.DataFrame] = {}
    original, projected, paired = _pick_labels(name, options, wanted, missing, notes) if model is not None \
        else (None, None, False)
    for variant, label in (("original", original), ("disentangled", projected)):
        if model is not None and label is None:
            missing.append(f"no `{name}` label with {'a non-null' if variant == 'disentangled' else 'null'} "
                           f"options.disentangle_from ({variant} directions)")
        lab = mine[mine["method"] == label] if label else mine.iloc[:0]
        done = lab[lab["status"] == "done"]
        chosen = _pick_strength(done["strength"], strength)
        note = _strength_note(label or name, done["strength"], chosen, strength)
        if note:
            (missing if chosen is None else notes).append(note)
        sub = aggs[(aggs["method"] == label) & (aggs["metric"] == metric) & (aggs["strength"] == chosen)] \
            if label and chosen is not None else aggs.iloc[:0]
        used.append(sub)
        body, rules = [], set()
        for edit in attrs:
            paper = spec[variant][edit]
            ours, diffs = [], []
            er = lab[lab["attribute"] == edit]
            if label and er.empty:
                missing.append(f"no `{label}` rows for attribute {edit}")
            elif label and len(sub) and (sub["attribute"] == edit).sum() == 0:
                missing.append(f"no {metric} aggregates for {label}/{edit}")
            for measured in attrs:
                c = sub[(sub["attribute"] == edit) & (sub["measured_attribute"] == measured)] if len(sub) else sub
                if len(sub) and (sub["attribute"] == edit).any() and c.empty:
                    missing.append(f"no measured attribute {measured} for {label}/{edit} "
                                   "(metrics.disentanglement.prompts)")
                v = float(c["value"].iloc[0]) if len(c) else None
                sd = float(c["std"].iloc[0]) if len(c) and "std" in c.columns else None
                ours.append(MISSING if v is None else (f"{v:.3g} ± {sd:.2g}" if sd is not None and not math.isnan(sd)
                                                       else f"{v:.3g}"))
                diffs.append(_diff(v, paper[measured][0]))
                cells.append({"block": variant, "method": label, "row": edit, "column": measured, "ours": v,
                              "ours_std": sd, "paper": float(paper[measured][0]),
                              "paper_std": float(paper[measured][1])})
            body.append([edit.capitalize(), "paper"] + [f"{paper[m][0]:.2f}±{paper[m][1]:.2f}" for m in attrs])
            if label:
                body += [["", "ours"] + ours, ["", "ours − paper"] + diffs]
            rules.add(len(body) - 1)
        caption = f"{variant.capitalize()} directions" + (f" (`{label}`, strength {chosen:g})"
                                                          if label and chosen is not None else "")
        tables.append((caption, TextTable(["Edit \\ Effect", "Source"] + [a.capitalize() for a in attrs], body,
                                          [False, False] + [True] * len(attrs), rules_after=rules)))
        matrix = _oracle_matrix(aggs, label, chosen, attrs) if label and chosen is not None else None
        if matrix is not None:
            oracle[variant] = matrix
            tables.append((f"{variant.capitalize()} directions, exact oracle (share of edits that changed each "
                           f"factor; `{label}`, strength {chosen:g})", _matrix_table(matrix)))
            cells += [{"block": f"{variant}-oracle", "method": label, "row": edit, "column": factor,
                       "ours": float(v), "ours_std": None, "paper": None, "paper_std": None}
                      for edit, r in matrix.iterrows() for factor, v in r.items()]
    s = _Settings(spec["settings"])
    if model is not None:
        done = mine[mine["attribute"].isin(attrs) & (mine["status"] == "done")]
        _common_settings(s, run, model, done, aggs[aggs["metric"] == metric] if len(aggs) else aggs,
                         [metric] if metric in s.spec else ["disentanglement"], ["num_steps", "eta"])
        both = pd.concat(used) if used else pd.DataFrame()
        if len(both) and "n_repeats" in both.columns:
            reps = sorted({int(r) for r in both["n_repeats"].dropna()})
            per = sorted({int(n / r) for n, r in zip(both["n"], both["n_repeats"]) if r == r and r})
            sp = spec["settings"]["samples"]
            s.compare("samples", f"{'/'.join(map(str, reps))} repetitions x {'/'.join(map(str, per))} samples",
                      reps == [sp["repeats"]] and per == [sp["per_repeat"]])
        else:
            s.compare("samples", None)
    if oracle:
        notes.insert(0, WORLD_NOTE)
        if len(oracle) == 2 and paired:
            notes.append(_projection_effect(oracle["original"], oracle["disentangled"]))
    context = f"run `{run.name}`" + (f", model `{model}`, suite `{suite}`" if model else "")
    return PaperTable(spec["title"], context, tables, pd.DataFrame(cells), list(dict.fromkeys(missing)),
                      s.differences, s.same, notes + list(spec.get("notes", [])))


# Oracle aggregates exist only for runs on a procedural world (metrics/oracle.py).
WORLD_NOTE = ("world figures: this run is on a procedural world (its oracle read the images), so `ours` comes "
              "from the world's DDPM and CLIP; the layout is the paper's, the values are not comparable to its "
              "CelebA-HQ numbers")


def _oracle_matrix(aggs: pd.DataFrame, label: str, strength: float, attrs: Sequence[str]) -> pd.DataFrame | None:
    """Rows: edited attribute; columns: world factors; value: mean `oracle_changed:<factor>` (None if absent).

    The factors named like the attributes come first, in the attributes' order, so the diagonal is the
    intended effect when the suite's factors share the attributes' names (faces_hspace does)."""
    if aggs.empty:
        return None
    sub = aggs[(aggs["method"] == label) & (aggs["strength"] == strength)
               & aggs["metric"].astype(str).str.startswith("oracle_changed:") & aggs["attribute"].isin(attrs)]
    if sub.empty:
        return None
    sub = sub.assign(factor=sub["metric"].str.removeprefix("oracle_changed:"))
    m = sub.pivot_table(index="attribute", columns="factor", values="value", aggfunc="first")
    factors = [a for a in attrs if a in m.columns] + sorted(f for f in m.columns if f not in attrs)
    return m.reindex(index=[a for a in attrs if a in m.index], columns=factors)


def _matrix_table(m: pd.DataFrame) -> TextTable:
    body = [[edit.capitalize()] + [MISSING if v != v else f"{v:.2f}" for v in r] for edit, r in m.iterrows()]
    return TextTable(["Edit \\ Changed"] + [str(f).capitalize() for f in m.columns], body,
                     [False] + [True] * len(m.columns))


def _projection_effect(original: pd.DataFrame, projected: pd.DataFrame) -> str:
    """The h-space paper's Table I claim on the exact oracle: projection (eq. 12) lowers the off-diagonal
    effects and keeps the diagonal (the issue's bars: off-diagonal >= 30% lower, diagonal >= 80% kept)."""
    def parts(m: pd.DataFrame) -> tuple[float, float]:
        diag = [m.at[a, a] for a in m.index if a in m.columns]
        off = [m.at[a, f] for a in m.index for f in m.columns if f != a and f in m.index]
        return float(np.nanmean(diag)) if diag else math.nan, float(np.nanmean(off)) if off else math.nan
    (d0, o0), (d1, o1) = parts(original), parts(projected)
    kept = d1 / d0 if d0 else math.nan
    lower = 1 - o1 / o0 if o0 else math.nan
    verdict = "PASS" if kept >= 0.8 and lower >= 0.3 else "FAIL"
    return (f"oracle, projected vs original directions: diagonal {d0:.3f} -> {d1:.3f} ({kept:.0%} kept, bar 80%); "
            f"off-diagonal among the attributes {o0:.3f} -> {o1:.3f} ({lower:.0%} lower, bar 30%): {verdict}")


# -- output ---------------------------------------------------------------------------------------
def paper_tables(run: RunData, which: Sequence[str] = TABLES, strength: float | None = None,
                 published: dict[str, Any] | None = None, label: str | None = None) -> list[PaperTable]:
    """`label`: the h-space table's original-directions label (default: the method's own name); its projected
    partner is the label with the same options but disentangle_from."""
    pub = published or load_published()
    out: list[PaperTable] = []
    if "svd" in which:
        out += svd_table1(run, pub["svd_table1"], strength)
    if "hspace" in which:
        out += hspace_table1(run, pub["hspace_table1"], strength, label)
    return out


def _sections(t: PaperTable) -> list[tuple[str, list[str]]]:
    return [("Missing", t.missing), ("Settings that differ from the paper's", t.differences),
            ("Same as the paper", t.same), ("Notes", t.notes)]


def render_paper_tables(tables: Sequence[PaperTable], fmt_: str = "md") -> str:
    parts = []
    for t in tables:
        if fmt_ == "tex":
            comments = [f"{t.title} -- {t.context}"]
            for head, lines in _sections(t):
                comments += [f"{head}:"] + [f"  - {x}" for x in lines] if lines else []
            blocks = [to_latex(tab, comments if i == 0 else [caption]) for i, (caption, tab) in enumerate(t.tables)]
            parts.append("\n\n".join(blocks))
            continue
        text = [f"## {t.title}", "", t.context[0].upper() + t.context[1:] + ".", ""]
        for caption, tab in t.tables:
            text += ([f"**{caption}**", ""] if caption else []) + [to_markdown(tab), ""]
        for head, lines in _sections(t):
            if lines:
                text += [f"{head}:", ""] + [f"- {x}" for x in lines] + [""]
        parts.append("\n".join(text))
    return "\n\n".join(parts).rstrip() + "\n"
