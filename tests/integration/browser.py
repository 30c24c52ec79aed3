"""A real browser for the tests that look at what users see: Debian's Chromium driven through its
chromedriver by Selenium, headless, with every host but this machine unreachable (a page that needs
a CDN shows what it shows offline). Installed with apt-get when missing and the tests run as root
(as `.ci/run` installs podman); otherwise the tests that need it are skipped, saying why.

Screenshots go to ``$FFR_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the checkout, ignored by
git) so a CI run keeps what the pages looked like.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("chromium", "chromium-driver")


def _binaries() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


def _install() -> str:
    """Install Chromium and chromedriver with apt-get; '' when done, else why not."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "Chromium is not installed and cannot be here (needs root and apt-get: apt-get install chromium " \
               "chromium-driver)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["apt-get", "install", "-y", "-qq", *PACKAGES], ["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
        if args[1] == "install" and out.returncode == 0:
            return ""
    return f"apt-get could not install {' '.join(PACKAGES)}: {out.stderr.strip()[-500:]}"


def artifacts_dir() -> Path:
    """Where screenshots are kept."""
    path = Path(os.environ.get("FFR_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def chrome(width: int = 1600, height: int = 1000):
    """A headless Chromium WebDriver that reaches 127.0.0.1 only; skips the test when there is no
    Chromium and none can be installed."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _binaries()
    if not (chromium and driver):
        why = _install()
        chromium, driver = _binaries()
        if why or not (chromium and driver):
            pytest.skip(why or "chromium or chromedriver missing after apt-get install")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def wait_for(check: Callable[[], object], what: str, timeout: float = 60.0, driver=None, shot: str = ""):
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (with a screenshot
    ``shot``.png of ``driver`` when given) after ``timeout`` seconds."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # noqa: BLE001  (the page is still rendering: stale or missing elements)
            last = e
        time.sleep(0.5)
    if driver is not None and shot:
        driver.save_screenshot(str(artifacts_dir() / f"{shot}-timeout.png"))
    pytest.fail(f"the page never showed {what} within {timeout:.0f} s (last error: {last})")


def page_text(driver) -> str:
    """The visible text of the page."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text
