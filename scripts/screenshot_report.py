"""Screenshot a run's report.html in headless Chromium.

    python scripts/screenshot_report.py RUN_DIR OUT.png [WIDTH HEIGHT]

Used for docs/gallery.png; needs chromium, chromedriver (scripts/install_browser.sh) and selenium.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.reports.browser import open_page


def main(argv: list[str]) -> int:
    run_dir, out = Path(argv[0]), Path(argv[1])
    width, height = (int(argv[2]), int(argv[3])) if len(argv) >= 4 else (1100, 1400)
    with open_page(run_dir / "report.html", width, height) as driver:
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
