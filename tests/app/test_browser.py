"""The app in a real browser: `streamlit run` on localhost, driven by headless Chromium."""

from __future__ import annotations

import os

import pytest

from siamese.encoder import LABELS
from tests.app.browser import browser_missing, chromium, predict_in_browser, streamlit_server


@pytest.mark.browser
def test_prediction_in_headless_chromium(tiny_model_dir, tmp_path):
    reason = browser_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {reason}")
        pytest.skip(reason)
    with (
        streamlit_server(tiny_model_dir, env={"APP_OUTPUTS_DIR": str(tmp_path)}) as url,
        chromium() as driver,
    ):
        label = predict_in_browser(driver, url, "A man is playing a guitar on stage.", "A man is performing music.")
        shot = tmp_path / "app.png"
        assert driver.save_screenshot(str(shot))
    assert label in LABELS
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
