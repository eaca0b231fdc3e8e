"""Run the app with `streamlit run` and drive it in Debian's headless Chromium (Selenium).

Used by the browser test, and by hand to refresh docs/app-screenshot.png:
    python -m tests.app.browser --model outputs/tiny/model --out docs/app-screenshot.png
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from stagekit.config import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None when Chromium and its driver are installed."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) or shutil.which(Path(p).name))]
    return f"not installed: {', '.join(missing)} (apt-get install chromium chromium-driver)" if missing else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(model_dir: Path, env: dict[str, str] | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Start `streamlit run` on a free localhost port; yield its URL; always stop it."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "app" / "streamlit_app.py"),
        "--server.headless", "true", "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
        "--server.address", "127.0.0.1", "--server.port", str(port),
        "--", "--model", str(model_dir),
    ]  # fmt: skip
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"streamlit exited with {proc.returncode}: {log.read().decode()[-2000:]}")
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not answer on {url} within {timeout:.0f}s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 1200) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def predict_in_browser(driver, url: str, premise: str, hypothesis: str, timeout: float = 60.0) -> str:
    """Fill both inputs, press Predict, and return the predicted label shown on the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    driver.get(url)
    for label, text in (("Premise", premise), ("Hypothesis", hypothesis)):
        box = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f'textarea[aria-label="{label}"]')))
        box.clear()
        box.send_keys(text)
    driver.find_element(By.XPATH, "//button[.//p[text()='Predict']]").click()

    label = wait.until(lambda d: metric_value(d, "Predicted label"))
    wait.until(
        lambda d: d.find_elements(
            By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg'
        )
    )
    time.sleep(1.0)  # let the chart finish drawing before a screenshot
    return label


def metric_value(driver, label: str) -> str | bool:
    """The value of the first metric whose label contains `label`, or False while there is none (for waits)."""
    from selenium.webdriver.common.by import By

    for metric in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]'):
        if label in metric.text:
            return metric.find_element(By.CSS_SELECTOR, '[data-testid="stMetricValue"]').text.strip()
    return False


def page_text(driver) -> str:
    return driver.find_element("tag name", "body").text


def compare_with_baseline(driver, timeout: float = 120.0) -> str:
    """Switch on the sidebar's baseline toggle; return the baseline's cosine as the page shows it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.XPATH, "//label[.//p[starts-with(text(), 'Compare with')]]").click()
    return WebDriverWait(driver, timeout).until(lambda d: metric_value(d, "all-MiniLM-L6-v2"))


def search_in_browser(driver, query: str, compare: bool = False, timeout: float = 180.0) -> str:
    """Open the search tab (default sentences: MNLI dev premises), run `query`, wait until every result
    table's heading shows ("Your model (N ms)", and with `compare` the baseline's), and return the page text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    driver.find_element(By.XPATH, "//*[@role='tab'][.//p[text()='Semantic search']]").click()
    box = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, 'input[aria-label="Query"]')))
    box.clear()
    box.send_keys(query, Keys.ENTER)
    headings = ["Your model ("] + (["all-MiniLM-L6-v2 ("] if compare else [])
    wait.until(lambda d: all(h in page_text(d) for h in headings) and "Encoding" not in page_text(d))
    time.sleep(1.5)  # let the tables draw before a screenshot
    return page_text(driver)


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshot the app predicting one pair in headless Chromium.")
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--premise", default="A man is playing a guitar on stage.")
    parser.add_argument("--hypothesis", default="A man is performing music.")
    args = parser.parse_args()
    with streamlit_server(args.model.resolve()) as url, chromium() as driver:
        label = predict_in_browser(driver, url, args.premise, args.hypothesis)
        driver.save_screenshot(str(args.out))
    print(f"predicted {label!r}; screenshot in {args.out}")


if __name__ == "__main__":
    main()
