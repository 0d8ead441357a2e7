"""One error policy, in Chromium: a failed action is a note beside its control, never an error badge.

Also: results that no longer match the inputs are cleared when the preset changes.
"""
from __future__ import annotations

import pytest
from conftest import open_example_scan

TIMEOUT_MS = 60_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture()
def page(demo_page):
    return demo_page(timeout_ms=TIMEOUT_MS)


def _no_error_badges(page) -> None:
    """Gradio marks an output whose event failed with an "Error" status; none may show."""
    badges = page.locator(".error, [data-testid='status-tracker'] .error")
    texts = [t for t in badges.all_inner_texts() if t.strip()]
    assert texts == [], texts


def test_bad_upload_is_a_note_beside_the_upload(page, tmp_path):
    from playwright.sync_api import expect

    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"this is text, not a picture\n" * 20)
    page.locator("#scan-file input[type=file]").set_input_files(str(bad))
    note = page.locator("#scan-msg")
    expect(note).to_contain_text("⚠️", timeout=TIMEOUT_MS)
    _no_error_badges(page)
    # Predict now says why beside its own button; the label stays empty, not a badge.
    page.click("#predict-btn")
    expect(page.locator("#predict-msg")).to_contain_text("⚠️")
    expect(page.locator("#prediction-label")).not_to_contain_text("Error")
    _no_error_badges(page)
    expect(note).to_contain_text("⚠️")  # the first note stays until the upload is retried
    # The next good upload clears it.
    page.locator("#scan-file button[aria-label='Clear']").first.click()
    open_example_scan(page)
    expect(note).to_be_empty()


def test_failed_generation_keeps_the_table_editable(page):
    from playwright.sync_api import expect

    page.get_by_text("Descriptions of one class: edit or generate").click()
    box = page.get_by_label("Class", exact=True)
    box.fill("a class that is not in the table")
    box.press("Enter")
    page.get_by_role("button", name="Generate descriptions").click()
    expect(page.locator("#generate-msg")).to_contain_text("not in the class table")
    _no_error_badges(page)
    table = page.locator("#class-table")
    expect(table).to_contain_text("glioma tumor")  # still the table, not a badge
    cell = table.locator("[role=gridcell]").first
    cell.dblclick()
    editor = table.locator("textarea, input").first
    expect(editor).to_be_editable()


def test_preset_change_clears_old_results(page):
    from playwright.sync_api import expect

    open_example_scan(page)
    page.click("#predict-btn")
    label = page.locator("#prediction-label")
    expect(label).to_contain_text("%")
    page.locator("#preset input").click()
    page.get_by_role("option", name="Knee osteoarthritis X-ray (kneexray)").click()
    expect(page.locator("#class-table")).to_contain_text("severe osteoarthritis")
    expect(label).not_to_contain_text("%")  # brain results do not stay beside knee classes
    expect(label).not_to_contain_text("normal brain")


def test_class_table_edit_clears_old_results(page):
    from playwright.sync_api import expect

    open_example_scan(page)
    page.click("#predict-btn")
    label = page.locator("#prediction-label")
    expect(label).to_contain_text("%")
    cell = page.locator("#class-table [role=gridcell]").first  # "glioma tumor"
    cell.dblclick()
    editor = page.locator("#class-table textarea, #class-table input").first
    editor.fill("astrocytoma")
    editor.press("Enter")
    expect(page.locator("#class-table")).to_contain_text("astrocytoma")
    expect(label).not_to_contain_text("%")  # the prediction was for the old classes
