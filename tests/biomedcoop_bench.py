"""A small synthetic benchmark in BiomedCoOp's exact layout, for the zoo tests.

``ROOT/<NAME>/split_<NAME>.json`` with ``[rel_path, label, class name]`` rows and
the images under ``ROOT/<NAME>/<NAME>/<rel_path>``; BUSI's file names contain
spaces and brackets, as the real ones do. In the train split the classes first
appear out of label order, so a sorted draw and Dassl's draw differ.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import class_image

# preset -> (folder, class names in label order, file stem per class)
DATASETS = {
    "busi": ("BUSI", ["benign tumor", "malignant tumor", "normal scan"], ["benign", "malignant", "normal"]),
    "btmri": ("BTMRI", ["glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"],
              ["gl", "me", "pi", "no"]),
}


def _rel(preset: str, label: int, i: int) -> str:
    folder, classes, stems = DATASETS[preset]
    if preset == "busi":
        return f"{classes[label].replace(' ', '_')}/{stems[label]} ({i + 1}).png"
    return f"Training/{classes[label].replace(' ', '_')}/{stems[label]}-{i:04d}.jpg"


def write_dataset(root: Path, preset: str, n_train: int = 5, n_test: int = 2, size: int = 32) -> Path:
    """One dataset folder; returns ``ROOT/<NAME>``. Train rows interleave classes, starting at the last."""
    folder, classes, _ = DATASETS[preset]
    data_dir = root / folder
    images = data_dir / folder
    n_classes = len(classes)
    order = list(range(n_classes - 1, -1, -1))  # first appearance: C-1, ..., 0 (not label order)
    rows: dict[str, list] = {"train": [], "val": [], "test": []}
    counter = {c: 0 for c in range(n_classes)}
    for split, n in (("train", n_train), ("val", 1), ("test", n_test)):
        for i in range(n):
            for c in order:
                rel = _rel(preset, c, counter[c])
                counter[c] += 1
                path = images / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                class_image(c, 1000 * c + counter[c] + (0 if preset == "busi" else 50), size).save(path)
                rows[split].append([rel, c, classes[c]])
    (data_dir / f"split_{folder}.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return data_dir


def write_benchmark(root: Path, **kwargs) -> Path:
    """Both datasets under ``root``; returns ``root``."""
    for preset in DATASETS:
        write_dataset(root, preset, **kwargs)
    return root


def corrupt(path: Path) -> None:
    """Replace an image by bytes no decoder reads."""
    path.write_bytes(np.random.default_rng(0).integers(0, 255, 64, dtype=np.uint8).tobytes())
