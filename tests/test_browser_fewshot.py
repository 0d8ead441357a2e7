"""The Few-shot tab in a real browser: upload two classes, consent, train on tiny, use in Predict, predict.

Headless Debian Chromium through Playwright (never ``playwright install``); the demo runs
in-process on a free loopback port with the tiny backbone. A screenshot of the page after
training and one after the prediction are written under ``tmp_path``.
"""
from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_image

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
CLASSES = ["glioma tumor", "normal brain"]
TIMEOUT_MS = 180_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(chromium, live_demo):  # chromium first: skip before launching when it is missing
    return live_demo[1]


@pytest.fixture(scope="module")
def page(server, chromium):
    pg = chromium.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(60_000)
    pg.goto(server)
    yield pg
    pg.close()


def _class_images(tmp_path: Path) -> list[list[str]]:
    """Four synthetic PNGs plus one shipped example per class: 5 each, enough for a held-out check."""
    out = []
    for label, example in enumerate(["mr_shoulder.png", "ct_small.png"]):
        files = []
        for i in range(4):
            path = tmp_path / CLASSES[label].replace(" ", "_") / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            synthetic_image(label, np.random.default_rng(10 * label + i), 96).save(path)
            files.append(str(path))
        files.append(shutil.copy(EXAMPLES / example, path.parent / example))
        out.append(files)
    return out


def _choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option).click()


def _label_percents(text: str) -> dict[str, float]:
    """gr.Label's text ("class\n63%" per row, the top class first as a heading) as {class: percent}."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return {name: float(value.rstrip("%")) for name, value in zip(lines, lines[1:])
            if name in CLASSES and value.endswith("%")}


def _cli_predict(checkpoint: Path, image: Path) -> dict:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "dpt_core", "predict", str(image), "--backbone", "tiny",
                          "--checkpoint", str(checkpoint), "--json"],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_train_then_predict_in_the_browser(page, tmp_path):
    from playwright.sync_api import expect

    # Predict starts on another preset with its own results: "Use in Predict" must still switch
    # preset, checkpoint and classes, and the next prediction must be the checkpoint's.
    _choose(page, "preset", "Knee osteoarthritis X-ray (kneexray)")
    expect(page.locator("#class-table")).to_contain_text("severe", timeout=TIMEOUT_MS)
    page.locator("#scan-file input[type=file]").set_input_files(str(EXAMPLES / "ct_small.png"))
    expect(page.locator("#image-info")).not_to_be_empty(timeout=TIMEOUT_MS)
    page.locator("#predict-btn").click()
    expect(page.locator("#prediction-label")).to_contain_text("%", timeout=TIMEOUT_MS)

    page.get_by_role("tab", name="Few-shot adaptation").click()
    page.locator("#fewshot-classes textarea").fill("\n".join(CLASSES))
    expect(page.locator("#fewshot-files-2")).to_be_hidden()  # two classes: two cards
    for i, files in enumerate(_class_images(tmp_path)):
        page.locator(f"#fewshot-files-{i} input[type=file]").set_input_files(files)
        expect(page.locator(f"#fewshot-count-{i}")).to_contain_text("5 images", timeout=TIMEOUT_MS)
    expect(page.locator("#fewshot-gallery-0 img").first).to_be_visible()

    train = page.locator("#fewshot-train")
    expect(train).to_be_disabled()  # consent gates the button
    page.get_by_text("Advanced", exact=True).click()
    epochs = page.locator("#fewshot-epochs input[type=number]")
    epochs.fill("4")
    epochs.press("Tab")
    page.locator("#fewshot-consent input[type=checkbox]").check()
    expect(train).to_be_enabled()
    train.click()

    summary = page.locator("#fewshot-summary")
    expect(summary).to_contain_text("Held-out check", timeout=TIMEOUT_MS)
    expect(summary).to_contain_text("adapted prompt")
    expect(page.locator("#fewshot-download")).to_be_visible()
    expect(page.locator("#fewshot-loss .role-legend")).to_contain_text("total", timeout=TIMEOUT_MS)
    assert page.locator("#fewshot-loss .mark-line path").count() == 4  # total, ce, l1, kl drawn
    page.screenshot(path=str(tmp_path / "fewshot_result.png"), full_page=True)
    with page.expect_download() as download:
        page.locator("#fewshot-download").click()
    archive = tmp_path / "checkpoint.zip"
    download.value.save_as(archive)
    with zipfile.ZipFile(archive) as zf:
        assert sorted(n.rsplit("/", 1)[-1] for n in zf.namelist()) == ["README.md", "config.json",
                                                                       "prompts.safetensors"]

    page.locator("#fewshot-use").click()
    expect(page.get_by_role("tab", name="Predict")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#preset input")).to_have_value("Brain tumour MRI (btmri)", timeout=TIMEOUT_MS)
    expect(page.locator("#checkpoint input")).to_have_value(re.compile("trained in this session"))
    table = page.locator("#class-table")
    expect(table).to_contain_text("normal brain", timeout=TIMEOUT_MS)
    expect(table).not_to_contain_text("meningioma")  # the checkpoint's two classes, not the preset's four
    expect(table).not_to_contain_text("severe")
    label = page.locator("#prediction-label")
    expect(label).not_to_contain_text("%")  # the knee results went with the knee classes
    page.locator("#predict-btn").click()  # the scan uploaded at the start is still there
    page.wait_for_function(
        "names => names.some(n => (document.querySelector('#prediction-label')?.innerText || '').includes(n))",
        arg=CLASSES, timeout=TIMEOUT_MS)
    expect(label).to_contain_text("%")
    shown = _label_percents(label.inner_text())
    page.screenshot(path=str(tmp_path / "fewshot_predict.png"), full_page=True)

    # The same prediction as the command line with the downloaded checkpoint.
    folder = tmp_path / "downloaded"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    config = next(folder.rglob("config.json"))
    cli = _cli_predict(config.parent, EXAMPLES / "ct_small.png")
    assert cli["classes"] == CLASSES
    probs = cli["results"][0]["probs"]
    assert set(shown) == set(CLASSES), label.inner_text()
    for name in CLASSES:
        assert abs(shown[name] - 100 * probs[name]) <= 1.0, (shown, probs)
    assert max(shown, key=shown.get) == cli["results"][0]["prediction"]
    print(f"screenshots: {tmp_path}")


def test_zip_import_fills_the_cards_in_the_browser(page, server, tmp_path):
    from playwright.sync_api import expect

    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for label, folder in enumerate(["benign", "malignant_tumour"]):
            for i in range(3):
                path = tmp_path / f"{folder}{i}.png"
                synthetic_image(label, np.random.default_rng(i), 64).save(path)
                zf.write(path, f"export/{folder}/{i}.png")
    page.goto(server)
    page.get_by_role("tab", name="Few-shot adaptation").click()
    page.locator("#fewshot-preset input").click()
    page.get_by_role("option", name="Custom classes").click()
    expect(page.locator("#fewshot-classes textarea")).to_have_value("")
    page.get_by_text("Or upload one zip with a folder per class").click()
    page.locator("#fewshot-zip input[type=file]").set_input_files(str(archive))
    expect(page.locator("#fewshot-classes textarea")).to_have_value("benign\nmalignant tumour", timeout=TIMEOUT_MS)
    for i in range(2):
        expect(page.locator(f"#fewshot-count-{i}")).to_contain_text("3 images", timeout=TIMEOUT_MS)
    expect(page.locator("#fewshot-files-2")).to_be_hidden()
    page.screenshot(path=str(tmp_path / "fewshot_zip.png"), full_page=True)
