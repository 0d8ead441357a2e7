"""The Predict tab at phone width (390 px) in headless Chromium: nothing overlaps, table text is readable."""
from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
PHONE = {"width": 390, "height": 844}  # a common phone's CSS pixels

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _overlap(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"] and \
        a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]


def test_scan_label_clears_its_button_and_class_names_are_not_cut(demo_page, tmp_path):
    from playwright.sync_api import expect

    page = demo_page(**PHONE)
    page.locator("#scan-file input[type=file]").set_input_files(str(EXAMPLES / "retina_fundus.png"))
    expect(page.locator("#image-info")).to_contain_text("PNG")
    label = page.locator('#scan-file label[data-testid="block-label"]').bounding_box()
    clear = page.locator('#scan-file button[aria-label="Clear"]').bounding_box()
    assert label and clear and label["width"] > 0 and clear["width"] > 0
    assert not _overlap(label, clear), (label, clear)
    assert label["x"] + label["width"] <= PHONE["width"] and clear["x"] + clear["width"] <= PHONE["width"]  # both on screen

    # Every class name shows in full: its text is not wider than its box (wrapping is fine, cutting is not).
    cells = page.locator("#class-table .body-cell.first-column")
    expect(cells.first).to_contain_text("glioma tumor")
    sizes = cells.evaluate_all("""cells => cells.map(c => {
        const text = c.querySelector('.text') || c;
        return [text.innerText, text.scrollWidth, text.clientWidth, c.scrollWidth, c.clientWidth]; })""")
    assert [s[0] for s in sizes] == ["glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"]
    for name, text_scroll, text_client, cell_scroll, cell_client in sizes:
        assert text_scroll <= text_client + 1 and cell_scroll <= cell_client + 1, (name, sizes)
    page.locator("#class-table").screenshot(path=str(tmp_path / "class-table-390.png"))
    page.locator("#scan-file").screenshot(path=str(tmp_path / "scan-390.png"))
