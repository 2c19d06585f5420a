"""The static HTML report: structure, relative image links, SVG plots; and (marked `browser`) a real
headless Chromium: no console errors, every image decoded, a screenshot written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.reports import browser
from harness.reports.html import write_html_report
from harness.reports.svg import Series, heatmap, line_chart, nice_ticks
from tests.harness.reports.synthetic import LPIPS_PROV, ZS_PROV, aggregate, make_run, per_image, unit

ORACLE_PROV = {"implementation": "oracle", "library_version": "1", "backbone": "world-oracle", "weights_sha256": "",
               "resize": "none", "metric_version": 1}


def gallery_run(root: Path) -> Path:
    """Two methods, a strength sweep given out of order, a failed unit, lpips, fid and a disentanglement matrix."""
    rows, pim, agg = [], [], []
    for method, strengths in (("sweep", (2.0, -1.0, 0.5)), ("sd", (1.0,))):
        for s in strengths:
            for seed in (0, 1):
                for attr in ("smile", "age"):
                    r = unit(method, attr, seed, s, edit_seconds=0.5 + abs(s))
                    rows.append(r)
                    pim.append(per_image(r, "lpips", 0.1 * abs(s) + 0.01 * seed, LPIPS_PROV))
                    if method == "sweep" and s == 2.0:  # oracle values: a success rate and a changed-factor matrix
                        pim += [per_image(r, m, v, ORACLE_PROV) for m, v in (
                            ("oracle_success", 1.0), ("oracle_changed:color", float(attr == "smile")),
                            ("oracle_changed:shape", 0.0))]
                agg.append(aggregate(method, "smile", "fid", 10 + s, strength=s))
    rows.append(unit("sd", "smile", 2, 1.0, status="failed", edit_seconds=float("nan")))
    for e in ("smile", "age"):
        for m in ("smile", "age"):
            agg.append(aggregate("sweep", e, "disentanglement", 0.5 if e == m else 0.1, strength=2.0, prov=ZS_PROV,
                                 measured_attribute=m, n_repeats=2, std=0.01))
    return make_run(root, rows, pim, agg, png=16)


def test_report_structure(tmp_path: Path) -> None:
    path = write_html_report(gallery_run(tmp_path / "g"))
    assert path == tmp_path / "g" / "report.html"
    text = path.read_text()
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert "<script" not in text and "data:image" not in text  # static, images linked not inlined
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert srcs and all(s.startswith("images/") and (path.parent / s).is_file() for s in srcs)
    assert len(text) < 100_000
    # leaderboard with best marked, plots (lpips and fid vs strength, runtime bars, one heatmap), manifest
    assert '<table class="board">' in text and "<strong>" in text
    # line charts: fid, lpips, oracle_success; runtime bars; heatmaps: disentanglement and oracle matrix
    assert text.count("<svg") == 6 and "lpips vs edit strength" in text and "Runtime per edited image" in text
    assert "disentanglement: sweep" in text and "oracle changed: sweep · m · strength 2" in text
    assert '"commit": "0000000000000000000000000000000000000000"' in text
    # strength sweep columns sorted; the failed unit shown as such
    sweep = text.split("<h3 id=\"grid-sweep")[1].split("</table>")[0]
    assert re.findall(r"<th>strength ([^<]+)</th>", sweep) == ["-1", "0.5", "2"]
    assert sweep.count("<tr>") == 1 + 4 and sweep.count("<img") == 4 * 4  # 4 samples x (original + 3)
    sd = text.split("<h3 id=\"grid-sd")[1].split("</table>")[0]
    assert 'class="failed"' in sd and "5 samples (item, seed)" in text


def test_svg_helpers() -> None:
    assert nice_ticks(0, 1) == [0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(3, 3)[0] < 3 < nice_ticks(3, 3)[-1]
    svg = line_chart([Series("a<b", [1, 0], [2.0, float("nan")], [0.1, None])], "t&", "x", "y")
    assert svg.startswith("<svg") and "a&lt;b" in svg and "t&amp;" in svg and svg.endswith("</svg>")
    hm = heatmap([[0.5, None], [-0.2, 0.1]], ["r1", "r2"], ["c1", "c2"], "h")
    assert hm.count("<rect") == 1 + 4 and "–" in hm


@pytest.mark.browser
def test_report_in_headless_chromium(tmp_path: Path) -> None:
    reason = browser.missing()
    if reason:
        pytest.skip(reason)
    path = write_html_report(gallery_run(tmp_path / "g"))
    with browser.open_page(path, 1200, 1600) as driver:
        assert driver.title.startswith("Run g")
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);")
        assert len(widths) == 4 * 4 + 4 * 2  # sweep grid: 4 samples x 4; sd grid: 4 done samples x 2
        assert all(complete and w > 0 for _, complete, w in widths), widths
        assert driver.execute_script("return document.querySelectorAll('svg').length;") == 6
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 1000
