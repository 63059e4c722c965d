"""Headless Chromium for the tests that look at a page (the dashboard, the lab's report).

One place decides whether a browser is here and how it is started, so every
page test runs offline the same way: no Selenium Manager download, no
background networking, a profile inside the test's own directory.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--no-default-browser-check",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--force-color-profile=srgb"]


def browser_skip() -> str | None:
    """Why no page can be looked at here, if it cannot."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install selenium)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"needs {path} (apt-get install chromium chromium-driver)"
    return None


def headless_chrome(out: str, window: str = "1280,1000", console: bool = False) -> Any:
    """A started driver with its profile under ``out``; the caller quits it (selenium blocks: use a thread)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = os.path.join(out, "profile")
    os.makedirs(profile, exist_ok=True)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={window}")
    if console:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
