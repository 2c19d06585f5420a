"""Paper tables: published numbers beside ours, differences, settings, and precise missing-unit messages."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.reports import load_run
from harness.reports.paper_tables import load_published, paper_tables, render_paper_tables
from tests.harness.reports.conftest import (
    HSPACE_ATTRS, SVD_OURS, hspace_run, hspace_value, oracle_changed, svd_run,
)
from tests.harness.reports.test_latex import check_tabular


def test_published_file_matches_spec() -> None:
    pub = load_published()
    t1 = pub["svd_table1"]["methods"]
    assert t1["avi"]["young"] == ["34.54", "27.59", "0.12"] and t1["sd"]["young"][2] == "0.30"
    assert [t1[m]["runtime_s"] for m in ("sd", "park", "avi")] == [6.2, 11.5, 6.7]
    t2 = pub["hspace_table1"]
    assert t2["original"]["glasses"]["age"] == [0.68, 0.03]
    assert t2["disentangled"]["hat"]["gender"] == [0.02, 0.09]
    assert all(set(t2[v][e]) == set(HSPACE_ATTRS) for v in ("original", "disentangled") for e in HSPACE_ATTRS)


def test_svd_table1_beside_published(tmp_path: Path) -> None:
    [table] = paper_tables(load_run(svd_run(tmp_path / "svd")), ["svd"])
    assert table.missing == []
    c = table.cells.set_index(["method", "row", "column"])
    assert c.loc[("sd", "female", "fid"), "paper"] == pytest.approx(31.75)
    assert c.loc[("avi", "young", "clip_score"), "paper"] == pytest.approx(27.59)
    assert c.loc[("park", "old", "lpips"), "ours"] == pytest.approx(SVD_OURS["lpips"])
    assert c.loc[("avi", "runtime", "edit_seconds"), ["ours", "paper"]].tolist() == pytest.approx([4.0, 6.7])
    assert len(table.cells) == 3 * (4 * 3 + 1)
    md = render_paper_tables([table])
    assert "| SD [45] | paper | 31.75 / 26.6 / 0.34 | 13.73 / 25.2 / 0.46 | 16.47 / 24.7 / 0.39 | " \
           "35.68 / 25.9 / 0.30 | 6.2 |" in md
    assert "|  | ours | 20 / 25 / 0.25 | 20 / 25 / 0.25 |" in md
    assert "|  | ours − paper | −11.8 / −1.6 / −0.09 |" in md  # 20 − 31.75, 25 − 26.6, 0.25 − 0.34
    assert "|  | ours − paper | −9.27 / −0.4 / +0.18 |" in md  # park female
    # settings that differ are stated from the run itself; matching ones are listed as the same
    diffs = "\n".join(table.differences)
    assert "model: ours `m`" in diffs and "resolution: ours 8x8; paper 512" in diffs
    assert "samples: ours 2–2 done units per method and attribute" in diffs
    assert "lpips" not in diffs and any(s.startswith("lpips: ours lpips-alex") for s in table.same)
    assert any(s.startswith("num_steps: ours 50") for s in table.same)
    assert "clip_score: ours ViT-L-14" in "\n".join(table.same)
    assert "fid: ours inception-v3-compat" in "\n".join(table.same)
    assert "Park et al. is lowest on both Female (0.07 vs 0.33) and Young" in md  # the text-vs-table note


def test_svd_table1_names_missing_units(tmp_path: Path) -> None:
    run = svd_run(tmp_path / "svd", drop_rows=(("park", "old"),), drop_aggs=(("avi", "female", "fid"),))
    [table] = paper_tables(load_run(run), ["svd"])
    assert table.missing == ["no `park` rows for attribute old", "no fid aggregates for avi/female"]
    md = render_paper_tables([table])
    assert "- no `park` rows for attribute old" in md and "- no fid aggregates for avi/female" in md
    assert "|  | ours | n/a / 25 / 0.25 |" in md  # what exists is still printed
    assert "n/a / n/a / n/a" in md.split("Park et al.")[1].split("Ours (AVI)")[0]


def test_svd_table1_without_any_rows_prints_published(tmp_path: Path) -> None:
    [table] = paper_tables(load_run(hspace_run(tmp_path / "h")), ["svd"])
    assert "no rows of methods `sd`, `park`, `avi`" in table.missing[0]
    md = render_paper_tables([table])
    assert "| Ours (AVI) | paper | 19.69 / 28.4 / 0.33 |" in md and "| ours |" not in md


def test_hspace_table1_original_and_disentangled(tmp_path: Path) -> None:
    [table] = paper_tables(load_run(hspace_run(tmp_path / "h")), ["hspace"])
    assert table.missing == []
    c = table.cells.set_index(["block", "row", "column"])
    assert len(table.cells) == 2 * 25
    for variant in ("original", "disentangled"):
        for e in HSPACE_ATTRS:
            for m in HSPACE_ATTRS:
                assert c.loc[(variant, e, m), "ours"] == pytest.approx(hspace_value(variant, e, m))
    assert c.loc[("original", "glasses", "age"), "paper"] == pytest.approx(0.68)
    assert c.loc[("disentangled", "hat", "hat"), "paper"] == pytest.approx(0.44)
    assert set(table.cells.loc[table.cells.block == "disentangled", "method"]) == {"supervised-dis"}
    md = render_paper_tables([table])
    assert "**Original directions (`supervised`, strength 1)**" in md
    assert "**Disentangled directions (`supervised-dis`, strength 1)**" in md
    assert "| Glasses | paper | 0.48±0.02 | 0.32±0.02 | 0.68±0.03 | 0.66±0.04 | 0.14±0.02 |" in md
    assert "|  | ours | 0.1 ± 0.01 | 0.5 ± 0.01 | 0.1 ± 0.01 | 0.1 ± 0.01 | 0.1 ± 0.01 |" in md
    assert "|  | ours − paper | −0.38 | +0.18 | −0.58 | −0.56 | −0.04 |" in md  # glasses, original
    assert any(s.startswith("samples: ours 2 repetitions x 100 samples") for s in table.differences)
    assert any(s.startswith("model: ours `ddpm-celebahq-256`") for s in table.same)
    assert any(s.startswith("eta: ours 1") for s in table.same)
    assert any(s.startswith("disentanglement: ours ViT-B-32") for s in table.same)
    assert "identical Gender effect of 0.66±0.04" in md


def test_hspace_table1_missing_disentangled_variant(tmp_path: Path) -> None:
    [table] = paper_tables(load_run(hspace_run(tmp_path / "h", disentangled=False)), ["hspace"])
    assert table.missing == ["no `supervised` label with a non-null options.disentangle_from "
                             "(disentangled directions)"]
    md = render_paper_tables([table])
    original, disentangled = md.split("**Disentangled directions**")
    assert "|  | ours | 0.5 ± 0.01 |" in original and "| ours |" not in disentangled


def test_paper_tables_latex(tmp_path: Path) -> None:
    tex = render_paper_tables(paper_tables(load_run(svd_run(tmp_path / "svd"))), "tex")
    check_tabular(tex)
    assert tex.count(r"\begin{tabular}") == 3
    assert r"Edit \textbackslash{} Effect" in tex and r"ours $-$ paper" in tex


def test_run_without_metrics_says_so(tmp_path: Path) -> None:
    import shutil

    run = svd_run(tmp_path / "svd")
    shutil.rmtree(run / "metrics")
    [table] = paper_tables(load_run(run), ["svd"])
    assert table.missing == ["no metrics/aggregates.parquet in the run: run `harness metrics RUN` for fid, "
                             "clip_score, lpips"]
    assert "|  | ours | n/a / n/a / n/a |" in render_paper_tables([table])  # runtime still shown from the rows
    assert table.cells.set_index(["method", "row"]).loc[("sd", "runtime"), "ours"] == pytest.approx(2.0)


def test_hspace_table1_oracle_matrix_beside_clip(tmp_path: Path) -> None:
    """A world run: each variant's exact oracle matrix is printed beside the CLIP one, labelled as world
    figures, with the projection check (diagonal kept 0.8/0.9 = 89%, off-diagonal 0.2/0.4 = 50% lower)."""
    [table] = paper_tables(load_run(hspace_run(tmp_path / "h", oracle=True)), ["hspace"])
    captions = [c for c, _ in table.tables]
    assert len(captions) == 4 and "exact oracle" in captions[1] and "exact oracle" in captions[3]
    c = table.cells.set_index(["block", "row", "column"])
    for variant in ("original", "disentangled"):
        for e in HSPACE_ATTRS:
            for f in HSPACE_ATTRS:
                assert c.loc[(f"{variant}-oracle", e, f), "ours"] == pytest.approx(oracle_changed(variant, e, f))
    assert table.notes[0].startswith("world figures")
    [check] = [n for n in table.notes if n.startswith("oracle, projected")]
    assert "0.900 -> 0.800 (89% kept" in check and "0.400 -> 0.200 (50% lower" in check and check.endswith("PASS")
    md = render_paper_tables([table])
    assert "| Smile | 0.90 | 0.40 | 0.40 | 0.40 | 0.40 |" in md


def test_hspace_table1_without_oracle_has_no_world_label(tmp_path: Path) -> None:
    [table] = paper_tables(load_run(hspace_run(tmp_path / "h")), ["hspace"])
    assert len(table.tables) == 2 and not any(n.startswith("world figures") for n in table.notes)


def test_hspace_projection_pairs_labels_that_differ_only_in_disentangle_from(tmp_path: Path) -> None:
    """With several supervised variants, the projected directions shown and checked are those of the label whose
    options equal the original's but for disentangle_from (not the first projected label by name); --label picks
    the original; a projected label with other options too is shown but never checked against it."""
    four = [("supervised", None, 1.0), ("a-other-dis", "all_others", 2.0), ("other", None, 2.0),
            ("supervised-dis", "all_others", 1.0)]
    run = load_run(hspace_run(tmp_path / "four", oracle=True, variants=four))

    def shown(table) -> list[str]:
        return sorted(set(table.cells["method"]))

    [table] = paper_tables(run, ["hspace"])
    assert shown(table) == ["supervised", "supervised-dis"]
    assert any(n.startswith("oracle, projected") for n in table.notes)
    [table] = paper_tables(run, ["hspace"], label="other")
    assert shown(table) == ["a-other-dis", "other"] and any(n.startswith("oracle, projected") for n in table.notes)

    mismatched = load_run(hspace_run(tmp_path / "two", oracle=True,
                                     variants=[("supervised", None, 1.0), ("other-dis", "all_others", 2.0)]))
    [table] = paper_tables(mismatched, ["hspace"])
    assert not any(n.startswith("oracle, projected") for n in table.notes)
    assert any("not compared" in n for n in table.notes)

    [table] = paper_tables(run, ["hspace"], label="nope")
    assert any(m.startswith("--label nope: no `supervised` label") for m in table.missing)
