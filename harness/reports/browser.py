"""Headless Chromium through Selenium, for checking and screenshotting report.html (tests, docs).

Needs the Debian packages chromium and chromium-driver (scripts/install_browser.sh) and the
`selenium` package (the test extra). `missing()` says what is absent, so callers can skip clearly.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def executables() -> tuple[str | None, str | None]:
    browser = os.environ.get("CHROMIUM") or next((p for b in BROWSERS if (p := shutil.which(b))), None)
    return browser, os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")


def missing() -> str | None:
    """None when a browser test can run, else why not (and how to fix it)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium, or the project's test extra)"
    browser, driver = executables()
    if browser is None:
        return "chromium not found on PATH (run scripts/install_browser.sh)"
    if driver is None:
        return "chromedriver not found on PATH (run scripts/install_browser.sh)"
    return None


@contextlib.contextmanager
def open_page(path: str | Path, width: int = 1200, height: int = 900) -> Iterator[Any]:
    """A headless Chromium driver showing file://path, with browser console logging enabled."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    reason = missing()
    if reason:
        raise RuntimeError(reason)
    browser, chromedriver = executables()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(Path(path).resolve().as_uri())
        yield driver
    finally:
        driver.quit()
