"""End to end in headless Chromium: open the offline demo, check and submit the seed-style
recipe, wait for the finished job's model card, keep a screenshot in docs/demo-job.png.

Skips when Chromium, chromedriver or selenium is missing (scripts/test.sh installs them).
Every request the page makes is checked to stay on 127.0.0.1. The screenshot is written
to docs/ when it is missing or MERGEBOT_UPDATE_SCREENSHOT=1 (so test runs do not churn a
tracked image), else under the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.spaces.conftest import ROOT, Demo

CHROMIUM = os.environ.get("MERGEBOT_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
CHROMEDRIVER = os.environ.get("MERGEBOT_CHROMEDRIVER") or shutil.which(
    "chromedriver",
    path=os.pathsep.join(filter(None, [os.environ.get("CHROMEWEBDRIVER"), os.environ.get("PATH")])),
)
"""Overridable with MERGEBOT_CHROMIUM / MERGEBOT_CHROMEDRIVER (GitHub's runners keep
chromedriver in $CHROMEWEBDRIVER)."""
SCREENSHOT = ROOT / "docs" / "demo-job.png"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium is not installed (apt-get install -y chromium chromium-driver)",
)


@pytest.fixture
def browser(tmp_path: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1500",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path / 'chromium'}",
        # anything not on loopback fails to resolve instead of reaching the internet
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_text(driver, css: str, text: str, timeout: float = 60.0) -> str:
    """The text of ``css`` once it contains ``text``."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        for element in driver.find_elements(By.CSS_SELECTOR, css):
            seen = element.text
            if text in seen:
                return seen
        time.sleep(0.25)
    raise AssertionError(f"{css} never showed {text!r}; last text: {seen[:500]!r}")


def requested_hosts(driver) -> set[str]:
    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if url.startswith(("http:", "https:", "ws:", "wss:")):
                hosts.add(urlparse(url).hostname)
    return hosts


def screenshot_path(tmp_path: Path) -> Path:
    if not SCREENSHOT.exists() or os.environ.get("MERGEBOT_UPDATE_SCREENSHOT") == "1":
        return SCREENSHOT
    return tmp_path / SCREENSHOT.name


def test_submit_seed_recipe_and_see_the_card(browser, demo: Demo, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(demo.url)
    wait_text(browser, "#who", "Acting as demo")
    assert "task_arithmetic" in wait_text(browser, "#recipe", "demo/donor-2")

    browser.find_element(By.CSS_SELECTOR, "#check").click()
    check = wait_text(browser, "#check-result", "Ready to merge")
    assert "merged = base + 1.0 * (donor-1 - base) + 0.3 * (donor-2 - base)" in check

    name = browser.find_element(By.CSS_SELECTOR, "#repo-name input, #repo-name textarea")
    name.send_keys(Keys.CONTROL, "a")
    name.send_keys("browser-seed-merge")
    browser.find_element(By.CSS_SELECTOR, "#submit").click()
    wait_text(browser, "#submit-result", "mergebot/browser-seed-merge")

    status = wait_text(browser, "#job", "succeeded", timeout=120)
    assert "Published: mergebot/browser-seed-merge" in status
    card = wait_text(browser, "#card", "made with mergebot")
    assert "merged = base + 1.0 * (donor-1 - base) + 0.3 * (donor-2 - base)" in card
    assert "demo/donor-2" in card

    browser.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)
    target = screenshot_path(tmp_path)
    target.parent.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(target))

    assert requested_hosts(browser) <= {"127.0.0.1"}
