"""The page's smaller promises, in Chromium: frame numbering, method controls, Train and Stop states,
a class table without column edits, and a readable layout at phone width."""
from __future__ import annotations

import pytest
from conftest import open_example_scan
from test_app_predict import write_dicom

TIMEOUT_MS = 60_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture()
def page(demo_page):
    return demo_page(timeout_ms=TIMEOUT_MS)


def test_frame_numbers_from_one_and_typing_or_arrows_move_the_preview(page, tmp_path):
    from playwright.sync_api import expect

    scan = write_dicom(tmp_path / "multi.dcm", frames=5)
    page.locator("#scan-file input[type=file]").set_input_files(str(scan))
    info = page.locator("#image-info")
    expect(info).to_contain_text("frame 3 of 5")
    number = page.locator("#frame input[type=number]")
    expect(number).to_have_value("3")  # the slider and the summary count alike
    number.fill("5")
    number.press("Enter")
    expect(info).to_contain_text("frame 5 of 5")
    page.locator("#frame input[type=range]").press("ArrowLeft")
    expect(info).to_contain_text("frame 4 of 5")


def test_rollout_greys_out_the_target_and_redraws(page):
    from playwright.sync_api import expect

    open_example_scan(page)
    page.click("#explain-btn")
    caption = page.locator("#overlay-caption")
    expect(caption).to_contain_text("Grad-CAM")
    page.get_by_label("Attention rollout").check()
    target = page.get_by_label("Grad-CAM target class")
    phrase = page.get_by_label("…or a phrase (Grad-CAM towards this text instead)")
    expect(target).to_be_disabled()
    expect(phrase).to_be_disabled()
    expect(caption).to_contain_text("rollout", ignore_case=True)  # the shown map follows the method
    page.get_by_label("Grad-CAM", exact=True).check()
    expect(target).to_be_enabled()
    expect(caption).to_contain_text("Grad-CAM")


def test_train_says_why_it_is_disabled_and_stop_is_idle(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Few-shot adaptation").click()
    train, stop = page.locator("#fewshot-train"), page.locator("#fewshot-stop")
    expect(train).to_be_disabled()
    expect(page.locator("#fewshot-train-hint")).to_contain_text("consent")
    expect(stop).to_be_disabled()  # nothing is running
    page.locator("#fewshot-consent input[type=checkbox]").check()
    expect(train).to_be_enabled()
    expect(page.locator("#fewshot-train-hint")).not_to_contain_text("consent")
    expect(stop).to_be_disabled()


def test_class_table_offers_rows_not_columns(page):
    from playwright.sync_api import expect

    cell = page.locator("#class-table [role=gridcell]").first
    cell.click(button="right")
    menu = page.locator(".cell-menu, [role=menu]").first
    expect(menu).to_be_visible()
    text = menu.inner_text().lower()
    assert "row" in text and "column" not in text, text
