"""The app in a real browser: `streamlit run` on localhost, driven by headless Chromium."""

from __future__ import annotations

import os

import pytest

from siamese.inference.encoder import LABELS
from tests.app.browser import (
    browser_missing,
    chromium,
    compare_with_baseline,
    page_text,
    predict_in_browser,
    search_in_browser,
    streamlit_server,
)


def require_browser() -> None:
    """Skip without Chromium here; in CI (which installs it) its absence is a failure, not a skip."""
    reason = browser_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {reason}")
        pytest.skip(reason)


@pytest.mark.browser
def test_prediction_in_headless_chromium(tiny_model_dir, tmp_path):
    require_browser()
    with (
        streamlit_server(tiny_model_dir, env={"APP_OUTPUTS_DIR": str(tmp_path)}) as url,
        chromium() as driver,
    ):
        label = predict_in_browser(driver, url, "A man is playing a guitar on stage.", "A man is performing music.")
        shot = tmp_path / "app.png"
        assert driver.save_screenshot(str(shot))
    assert label in LABELS
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.browser
def test_calibration_search_and_baseline_in_headless_chromium(tiny_model_dir, tmp_path):
    require_browser()
    with (
        streamlit_server(tiny_model_dir, env={"APP_OUTPUTS_DIR": str(tmp_path)}) as url,
        chromium(height=1600) as driver,
    ):
        predict_in_browser(driver, url, "The stock market fell sharply today.", "A cat is sitting on the mat.")
        text = page_text(driver)
        assert "% of random sentence pairs" in text and "Verdict:" in text
        baseline_cosine = compare_with_baseline(driver)
        assert -1.0 <= float(baseline_cosine) <= 1.0
        text = search_in_browser(driver, "A woman is reading a book.", compare=True)
        assert "3,000 sentences" in text and "Your model (" in text and "all-MiniLM-L6-v2 (" in text
        assert driver.save_screenshot(str(tmp_path / "search.png"))
