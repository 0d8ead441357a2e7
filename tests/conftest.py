"""Test-wide setup: offline Hugging Face, deterministic torch, shared tiny backbone."""
import os

# Must be set before any Hugging Face import: tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    # `network` tests need the real BiomedCLIP from the Hub: skipped unless asked for with -m network.
    if "network" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="needs the network (run with -m network)")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------------------- shared fixtures
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SYNTH_CLASSES = ["red blotches", "blue stripes", "green noise"]


def synthetic_image(label: int, rng: np.random.Generator, size: int = 224) -> Image.Image:
    """Three textures a random ViT can tell apart in any crop (training uses RandomResizedCrop)."""
    a = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    if label == 0:
        a[..., 0] = np.where(rng.random((size, size)) < 0.5, 230, a[..., 0])
    elif label == 1:
        a[:, rng.integers(0, 8)::16, 2] = 230
    else:
        a[..., 1] = rng.integers(100, 255, (size, size))
    return Image.fromarray(a)


@pytest.fixture(scope="session")
def ct_path(tmp_path_factory) -> str:
    """pydicom's small CT, altered by one header field: an upload, not the shipped example made from it
    (predictions on shipped examples are cached, and tests should reach the model)."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.InstanceNumber = 9999
    path = tmp_path_factory.mktemp("uploads") / "ct_small_upload.dcm"
    ds.save_as(path)
    return str(path)


BTMRI = ["glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"]
# What the Few-shot tab's train_stream handler yields into, as plain keys (handlers run without a UI).
FEWSHOT_UI = SimpleNamespace(**{k: k for k in ("pending", "status", "plot", "result", "summary", "per_class",
                                                "confusion", "download", "last")})


def class_image(label: int, seed: int, size: int = 64) -> Image.Image:
    """A four-class synthetic image: the three textures, and the first one inverted for class 3."""
    im = synthetic_image(label % 3, np.random.default_rng(seed), size)
    return Image.fromarray(255 - np.asarray(im)) if label >= 3 else im


def class_files(root: Path, n_per_class: int, n_classes: int = 4) -> list[list[str]]:
    """PNG files per class under ``root`` (what the Few-shot tab's cards receive)."""
    files = []
    for c in range(n_classes):
        paths = []
        for i in range(n_per_class):
            path = root / f"c{c}" / f"img{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            class_image(c, 100 * c + i).save(path)
            paths.append(str(path))
        files.append(paths)
    return files


def synthetic_set(n_per_class: int, seed: int):
    from dpt_core.data import LabelledImages

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(len(SYNTH_CLASSES)):
        for _ in range(n_per_class):
            images.append(synthetic_image(c, rng))
            labels.append(c)
    return LabelledImages(images, torch.tensor(labels), list(SYNTH_CLASSES))


@pytest.fixture(scope="session")
def tiny():
    from dpt_core.backbone import load_backbone

    return load_backbone("tiny", "cpu")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny model written in open_clip's local layout (text tower in a relative `text/`)."""
    from dpt_core.localdir import write_tiny_backbone

    return write_tiny_backbone(tmp_path_factory.mktemp("tiny_backbone"))


# ---------------------------------------------------------------------- the app, launched for real
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_demo(tiny):
    """The real demo (as ``app.main.main`` builds it) on tiny, on a free loopback port: (demo, url)."""
    from app.main import QUEUE_CONCURRENCY, build_demo, launch_options
    from app.services import Services

    demo = build_demo(Services(tiny))
    demo.queue(default_concurrency_limit=QUEUE_CONCURRENCY)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                            quiet=True, **launch_options())
    try:
        yield demo, url
    finally:
        demo.close()


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium driven by Playwright (never ``playwright install``); skips when missing."""
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: browser tests need Debian's chromium package")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def demo_page(chromium, live_demo):  # chromium first: skip before launching when it is missing
    """A factory of Chromium pages on the live demo at a given viewport, each ready once Predict shows."""
    pages = []

    def open_page(width: int = 1400, height: int = 1000, timeout_ms: int = 60_000):
        pg = chromium.new_page(viewport={"width": width, "height": height})
        pages.append(pg)
        pg.set_default_timeout(timeout_ms)
        pg.goto(live_demo[1])
        pg.wait_for_selector("#predict-btn")
        return pg

    yield open_page
    for pg in pages:
        pg.close()


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``python -m dpt_core ARGS`` in process: (exit status, stdout, stderr)."""
    from dpt_core.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def open_example_scan(page, name: str = "ct_small.png") -> None:
    """Upload a shipped example in the Predict tab of a Chromium page and wait until it is decoded."""
    from playwright.sync_api import expect

    page.locator("#scan-file input[type=file]").set_input_files(str(Path(__file__).resolve().parent.parent
                                                                    / "assets" / "examples" / name))
    expect(page.locator("#image-info")).to_contain_text("PNG")
