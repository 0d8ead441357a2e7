"""The trust surface in headless Chromium: "not calibrated" under the label, the faithfulness line under the overlay."""
from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
TIMEOUT_MS = 60_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(chromium, live_demo):  # chromium first: skip before launching when it is missing
    return live_demo


def test_calibration_note_and_faithfulness_line(chromium, served):
    from playwright.sync_api import expect

    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(served[1])
        page.wait_for_selector("#predict-btn")
        page.locator("#scan-file input[type=file]").set_input_files(str(EXAMPLES / "retina_fundus.png"))
        expect(page.locator("#image-info")).to_contain_text("PNG")
        page.click("#predict-btn")
        expect(page.locator("#prediction-label")).to_contain_text("%")
        expect(page.locator("#calibration")).to_contain_text("Not calibrated")  # the zero-shot prompt
        expect(page.locator("#coverage")).to_contain_text("90%")  # the coverage picker, default 90 %

        page.click("#explain-btn")
        expect(page.locator("#overlay-caption")).to_contain_text("not lesion localisation")
        expect(page.locator("#overlay-caption")).not_to_contain_text("deletion AUC")
        page.locator("#faithfulness input[type=checkbox]").check()
        page.click("#explain-btn")
        expect(page.locator("#overlay-caption")).to_contain_text("deletion AUC")
        expect(page.locator("#overlay-caption")).to_contain_text("for random order")
    finally:
        page.close()
