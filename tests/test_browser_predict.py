"""The Predict tab in headless Chromium: upload, predict, edit a description, re-predict, overlay, screenshot.

Uses the system Chromium (never ``playwright install``); skipped when it is missing.
The demo runs in-process on a free loopback port with the tiny backbone.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
NEW_SENTENCE = "A unique browser-test finding of bright round spots near the optic disc."
TIMEOUT_MS = 60_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(chromium, live_demo):  # chromium first: skip before launching when it is missing
    return live_demo


@pytest.fixture(scope="module")
def url(served):
    return served[1]


@pytest.fixture(scope="module")
def browser(chromium):
    return chromium


@pytest.fixture()
def page(browser, url):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(url)
    pg.wait_for_selector("#predict-btn")
    yield pg
    pg.close()


def _cell_after(page, text: str):
    """The grid cell to the right of the first-column cell whose text is ``text`` (its descriptions)."""
    cells = page.locator("#class-table [role=gridcell]")
    texts = cells.all_inner_texts()
    return cells.nth(texts.index(text) + 1)


def test_upload_predict_edit_repredict_overlay(page, tmp_path):
    from playwright.sync_api import expect

    page.locator("#scan-file input[type=file]").set_input_files(str(EXAMPLES / "retina_fundus.png"))
    expect(page.locator("#image-info")).to_contain_text("PNG")

    page.click("#predict-btn")
    expect(page.locator("#prediction-label")).to_contain_text("%")
    predicted = page.locator("#contrib-class input").input_value()
    assert predicted in {"glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"}
    expect(page.locator("#modality-check")).to_contain_text("not meaningful")  # random weights

    # Replace the predicted class's descriptions with one new sentence, directly in the table.
    _cell_after(page, predicted).dblclick()
    editor = page.get_by_label("Edit cell")
    editor.fill(NEW_SENTENCE)
    editor.press("Enter")
    expect(page.locator("#class-table")).to_contain_text(NEW_SENTENCE[:30])

    page.click("#predict-btn")
    # Its only description now heads the class's expert prompts in the contributions table.
    expect(page.locator("#contrib-table")).to_contain_text(NEW_SENTENCE)
    assert page.locator("#contrib-class input").input_value() == predicted  # descriptions explain, not decide

    page.click("#explain-btn")
    expect(page.locator("#overlay img")).to_be_visible()
    expect(page.locator("#overlay-caption")).to_contain_text("not lesion localisation")

    shot = tmp_path / "predict_tab.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_example_gallery_sets_file_and_preset(page):
    from playwright.sync_api import expect

    page.locator("#examples").get_by_role("button").first.click()  # the fundus photograph
    expect(page.locator("#image-info")).to_contain_text("PNG")
    expect(page.locator("#preset input")).to_have_value("Fundus photography (RETINA) (retina)")
    expect(page.locator("#class-table")).to_contain_text("diabetic retinopathy")
    # The CT example loads its DICOM original and, having no suggested preset, keeps the current one.
    page.locator("#examples").get_by_role("button").nth(3).click()
    expect(page.locator("#image-info")).to_contain_text("DICOM")
    expect(page.locator("#image-info")).to_contain_text("modality CT")
    expect(page.locator("#preset input")).to_have_value("Fundus photography (RETINA) (retina)")


def test_session_folder_is_deleted_when_the_tab_closes(browser, served):
    import time

    from app.session import cleanup_session_state, session_dir

    demo, local_url = served
    page = browser.new_page()
    page.goto(local_url)
    page.wait_for_selector("#predict-btn", timeout=TIMEOUT_MS)
    state_id = next(b._id for b in demo.blocks.values()
                    if isinstance(b, gr.State) and b.delete_callback is cleanup_session_state)
    folder = None
    for _ in range(100):  # the page's load event creates this session's state
        states = [s.state_data[state_id] for s in demo.state_holder.session_data.values()
                  if state_id in s.state_data and s.state_data[state_id] and not s.is_closed]
        if states:
            folder = session_dir(states[-1])  # what the Few-shot tab does before writing a checkpoint
            break
        time.sleep(0.1)
    assert folder is not None and folder.is_dir()
    page.close()  # ends the session: the unload event removes the folder
    for _ in range(150):
        if not folder.exists():
            break
        time.sleep(0.1)
    assert not folder.exists()
