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
