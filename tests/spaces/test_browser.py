"""End to end in headless Chromium: open the offline demo, check and submit the seed-style
recipe, wait for the finished job's model card, follow every link the job view and the card
show, submit again unchanged (skipped, with a link to the commit), remerge from a History
row, and read the messages of a broken recipe; screenshots at 1280 and 1920 px in docs/.

Skips when Chromium, chromedriver or selenium is missing (scripts/test.sh installs them).
Every request the page makes is checked to stay on 127.0.0.1. Screenshots are written to
docs/ when missing or MERGEBOT_UPDATE_SCREENSHOT=1 (so test runs do not churn tracked
images), else under the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx2
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
WIDTHS = (1280, 1920)
"""Window widths the screenshots are taken at (docs/demo-job-1280.png, ...)."""

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


def screenshot_path(tmp_path: Path, name: str = SCREENSHOT.name) -> Path:
    target = SCREENSHOT.with_name(name)
    if not target.exists() or os.environ.get("MERGEBOT_UPDATE_SCREENSHOT") == "1":
        return target
    return tmp_path / name


def links(driver, css: str) -> list[str]:
    """Every link target under ``css``, once each, in page order."""
    from selenium.webdriver.common.by import By

    found = []
    for element in driver.find_elements(By.CSS_SELECTOR, f"{css} a[href]"):
        href = element.get_attribute("href")
        if href not in found:
            found.append(href)
    return found


def expected_text(href: str) -> str:
    """What the page at a Hub link must show: the commit's id, or the repo's name."""
    path = urlparse(href).path.strip("/").split("/")
    if len(path) >= 4 and path[2] in ("commit", "tree"):
        return path[3] if path[2] == "commit" else "Files at"
    return path[-1]


def follow_every_link(driver, hrefs: list[str], hub_url: str) -> None:
    """Each link answers 200 and, opened in the browser, shows what it names."""
    from selenium.webdriver.common.by import By

    for href in hrefs:
        assert href.startswith(hub_url + "/"), f"{href} does not point at the demo's Hub"
        answer = httpx2.get(href, timeout=10)
        assert answer.status_code == 200, (href, answer.text[:300])
        assert answer.headers["content-type"].startswith("text/html"), href
        driver.get(href)
        text = driver.find_element(By.TAG_NAME, "main").text
        assert expected_text(href) in text, (href, text[:500])


def words_stay_whole(driver, css: str) -> list[str]:
    """The cells under ``css`` whose text wraps onto more than one line."""
    return driver.execute_script(
        """
        const broken = [];
        for (const cell of document.querySelectorAll(arguments[0])) {
          const range = document.createRange();
          range.selectNodeContents(cell);
          const tops = [...range.getClientRects()].map(r => r.top);
          // boxes of one line differ by their padding; a second line is a line lower
          if (Math.max(...tops) - Math.min(...tops) > 10) broken.push(cell.innerText);
        }
        return broken;
        """,
        f"{css} td",
    )


def type_recipe(driver, text: str) -> None:
    """Replace the recipe editor's text by typing one line (the editor closes brackets
    itself, so what it added after the cursor is deleted at the end)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    editor = driver.find_element(By.CSS_SELECTOR, "#recipe .cm-content")
    editor.click()
    editor.send_keys(Keys.CONTROL, "a")
    editor.send_keys(Keys.BACKSPACE)
    editor.send_keys(text)
    added = editor.text[len(text):] if editor.text.startswith(text) else ""
    editor.send_keys(Keys.DELETE * len(added))
    assert editor.text == text, editor.text


def test_submit_seed_recipe_and_follow_every_link(browser, demo: Demo, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(demo.url)
    wait_text(browser, "#who", "Acting as demo")
    assert "Sign in" not in browser.find_element(By.TAG_NAME, "body").text  # mocked: no button
    assert "task_arithmetic" in wait_text(browser, "#recipe", "demo/donor-2")

    browser.find_element(By.CSS_SELECTOR, "#check").click()
    check = wait_text(browser, "#check-result", "Ready to merge")
    assert "merged = base + 1.0 * (donor-1 - base) + 0.3 * (donor-2 - base)" in check

    name = browser.find_element(By.CSS_SELECTOR, "#repo-name input, #repo-name textarea")
    name.send_keys(Keys.CONTROL, "a")
    name.send_keys("Browser-Seed-Merge")
    browser.find_element(By.CSS_SELECTOR, "#submit").click()
    wait_text(browser, "#submit-result", "mergebot/Browser-Seed-Merge")
    assert browser.find_element(By.CSS_SELECTOR, "#check-result").text == ""

    status = wait_text(browser, "#job", "succeeded", timeout=120)
    assert "Published: mergebot/Browser-Seed-Merge" in status
    card = wait_text(browser, "#card", "made with mergebot")
    assert "merged = base + 1.0 * (donor-1 - base) + 0.3 * (donor-2 - base)" in card
    assert "demo/donor-2" in card and "AutoTokenizer" not in card  # the demo has none
    wait_text(browser, "#history", "mergebot/Browser-Seed-Merge")  # no Refresh pressed

    for width in WIDTHS:
        browser.set_window_size(width, 1500)
        time.sleep(0.5)
        assert words_stay_whole(browser, "#card") == [], width
        browser.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.5)
        target = screenshot_path(tmp_path, f"demo-job-{width}.png")
        target.parent.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(target))
        browser.execute_script("document.querySelector('#card').scrollIntoView()")
        time.sleep(0.5)
        assert browser.save_screenshot(str(screenshot_path(tmp_path, f"demo-card-{width}.png")))
    browser.set_window_size(1400, 1500)
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(screenshot_path(tmp_path)))

    job_links, card_links = links(browser, "#job"), links(browser, "#card")
    assert any("/commit/" in h for h in job_links) and len(card_links) >= 6
    assert requested_hosts(browser) <= {"127.0.0.1"}
    follow_every_link(browser, job_links + card_links, demo.hub_url)

    # The same recipe again: skipped, with a link to the commit that holds it.
    browser.get(demo.url)
    wait_text(browser, "#who", "Acting as demo")
    name = browser.find_element(By.CSS_SELECTOR, "#repo-name input, #repo-name textarea")
    name.send_keys(Keys.CONTROL, "a")
    name.send_keys("Browser-Seed-Merge")
    browser.find_element(By.CSS_SELECTOR, "#submit").click()
    skipped = wait_text(browser, "#job", "skipped", timeout=120)
    assert "unchanged since commit" in skipped and "force a new merge" in skipped
    commit_links = [h for h in links(browser, "#job") if "/commit/" in h]
    assert commit_links and all(h in job_links for h in commit_links)
    follow_every_link(browser, commit_links, demo.hub_url)

    # Each History row remerges its own recipe.
    browser.get(demo.url)
    row = wait_text(browser, "#history", "mergebot/Browser-Seed-Merge")
    recipe_id = re.search(r"(\d+)\s+mergebot/Browser-Seed-Merge", row).group(1)
    cell = next(  # Gradio's table shows its rows as [role=row] > [role=gridcell]
        c for r in browser.find_elements(By.CSS_SELECTOR, "#history [role=row]")
        if "mergebot/Browser-Seed-Merge" in r.text
        for c in r.find_elements(By.CSS_SELECTOR, "[role=gridcell]") if "remerge" in c.text
    )
    cell.click()
    wait_text(browser, "#remerge-result", f"Remerge of recipe {recipe_id} queued")
    wait_text(browser, "#job", "remerge asked by @demo", timeout=120)


def test_broken_recipes_show_whole_messages_at_their_line(browser, demo: Demo) -> None:
    from selenium.webdriver.common.by import By

    browser.get(demo.url)
    wait_text(browser, "#who", "Acting as demo")
    unclosed = "{merge_method: linear, models: [demo/base"
    type_recipe(browser, unclosed)
    browser.find_element(By.CSS_SELECTOR, "#check").click()
    shown = wait_text(browser, "#check-result", "<stream end>")
    assert "expected ',' or ']', but got '<stream end>'" in shown  # whole, not eaten as HTML
    assert "recipe (line 1)" in " ".join(shown.split()) and f"1 | {unclosed}" in shown

    missing = (
        "{merge_method: linear, models: [{model: demo/base, parameters: {weight: 1}}, "
        "{model: demo/nope, parameters: {weight: 1}}]}"
    )
    type_recipe(browser, missing)
    browser.find_element(By.CSS_SELECTOR, "#check").click()
    shown = wait_text(browser, "#check-result", "demo/nope")
    assert "models[1].model (line 1): model repo demo/nope does not exist" in " ".join(
        shown.replace("\n(", " (").split()
    ), shown
    assert "1 | {merge_method: linear, models: [{model: demo/base" in shown

    type_recipe(browser, unclosed)
    browser.find_element(By.CSS_SELECTOR, "#submit").click()
    wait_text(browser, "#submit-result", "<stream end>")
    assert browser.find_element(By.CSS_SELECTOR, "#check-result").text == ""  # not stale
