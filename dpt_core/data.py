"""Data: image folders, BiomedCoOp split files, few-shot sampling and transforms.

- An image folder has one subfolder per class. A subfolder matches a class when
  the names are equal after ``_`` -> space and case folding; subfolders are
  taken in the preset's label order when they all match it, else sorted.
- A BiomedCoOp split file is ``{"train"|"val"|"test": [[rel_path, label,
  classname], ...]}``. BiomedCoOp ships a dataset as ``ROOT/<NAME>/split_<NAME>.json``
  with the images under ``ROOT/<NAME>/<NAME>/<rel_path>``; ``rel_path`` is resolved
  against that image folder first, then against the data folder, then against the
  split file's own folder. A missing image is an error naming every path tried.
  Reading a split only looks the files up; images are decoded when a set is built.
- Few-shot subsets follow Dassl's ``generate_fewshot_dataset`` after
  ``random.seed(seed)``: classes in order of first appearance in the split,
  ``random.sample(items, K)`` when a class has at least K items, else all of them.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from .backbone import Backbone
from .descriptions import class_key
from .errors import InputError
from .imageio import load_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".dcm", ".dicom", ""}


class DataError(InputError):
    """The data folder or split file does not fit; the message says how."""


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: int
    class_name: str
    rel: str = ""  # the path as the split file gives it (relative to the image folder); "" for image folders


def eval_transform(backbone: Backbone) -> T.Compose:
    """Resize the shorter side (bicubic), centre crop, normalise: BiomedCLIP's preprocessing."""
    size = backbone.image_size
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(backbone.mean, backbone.std),
    ])


def train_transform(backbone: Backbone) -> T.Compose:
    """The paper's only augmentation: RandomResizedCrop(224, scale (0.08, 1), bicubic)."""
    return T.Compose([
        T.RandomResizedCrop(backbone.image_size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(backbone.mean, backbone.std),
    ])


def folder_labels(folders: Sequence[str], class_names: Sequence[str]) -> dict[str, int]:
    """The label of each folder named after a class ('_' as space, any case); other folders are left out."""
    by_key = {class_key(c): i for i, c in enumerate(class_names)}
    return {f: by_key[class_key(f)] for f in folders if class_key(f) in by_key}


def folders_as_classes(folders: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """The folders themselves as the classes, in sorted order ('_' read as a space)."""
    ordered = sorted(folders)
    return [f.replace("_", " ") for f in ordered], {f: i for i, f in enumerate(ordered)}


def match_class_folders(folders: Sequence[str], class_names: Sequence[str] | None) -> tuple[list[str], dict[str, int]]:
    """Class names in label order and the label of each folder: the given classes when every folder
    names one of them, else the folders themselves."""
    if class_names is not None:
        labels = folder_labels(folders, class_names)
        if folders and len(labels) == len(folders):
            return list(class_names), labels
    return folders_as_classes(folders)


def scan_image_folder(root: str | Path, class_names: Sequence[str] | None = None) -> tuple[list[str], list[ImageRecord]]:
    """(class names in label order, records) of a folder with one subfolder per class."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root} has no class subfolders")
    names, labels = match_class_folders(folders, class_names)
    records = [
        ImageRecord(path, labels[folder], names[labels[folder]])
        for folder in folders
        for path in sorted((root / folder).iterdir())
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not records:
        raise DataError(f"no images found under {root}")
    return names, records


def find_split_file(data_dir: str | Path) -> Path | None:
    """``split_<FOLDER>.json`` in the data folder, else its only ``split_*.json``, else None."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return None
    own = data_dir / f"split_{data_dir.name}.json"
    if own.is_file():
        return own
    found = sorted(data_dir.glob("split_*.json"))
    return found[0] if len(found) == 1 else None


def image_folders(root: str | Path, split_file: str | Path) -> list[Path]:
    """Where a split's relative paths are looked up, in order (BiomedCoOp's ``ROOT/<NAME>/<NAME>`` first)."""
    root, split_file = Path(root), Path(split_file)
    out: list[Path] = []
    for folder in (root / root.name, root, split_file.parent / split_file.parent.name, split_file.parent):
        if folder not in out and folder.is_dir():
            out.append(folder)
    return out or [root]


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (recorded for the split file a run drew from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_split_file(root: str | Path, split_file: str | Path | None) -> Path:
    """The split file named (relative to ``root`` when not found as given), else the one in ``root``."""
    root = Path(root)
    if split_file is None:
        found = find_split_file(root)
        if found is None:
            raise DataError(f"no split_{root.name}.json (or single split_*.json) in {root}")
        return found
    split_file = Path(split_file)
    if not split_file.is_absolute() and not split_file.is_file():
        split_file = root / split_file
    return split_file


def read_split_file(root: str | Path, split_file: str | Path | None, split: str) -> tuple[list[str], list[ImageRecord]]:
    """Records of one split of a BiomedCoOp ``split_<NAME>.json``; class names by label id.

    Only file lookups (no decoding), so reading a split of thousands of images is cheap.
    """
    root = Path(root)
    split_file = resolve_split_file(root, split_file)
    try:
        raw = json.loads(split_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read split file {split_file.name}: {exc}") from exc
    if not isinstance(raw, dict) or split not in raw:
        has = ", ".join(raw) if isinstance(raw, dict) else "no splits"
        raise DataError(f"split file {split_file.name} has no {split!r} split (has {has})")
    names: dict[int, str] = {}
    try:
        for split_items in raw.values():
            for _rel, label, name in split_items:
                names.setdefault(int(label), str(name))
    except (TypeError, ValueError) as exc:
        raise DataError(f"split file {split_file.name}: entries must be [path, label, class name] ({exc})") from exc
    class_names = [names[i] for i in sorted(names)]
    if sorted(names) != list(range(len(class_names))):
        raise DataError(f"labels in {split_file.name} are not 0..C-1")
    folders = image_folders(root, split_file)
    records = []
    for rel, label, name in raw[split]:
        tried = [folder / rel for folder in folders]
        path = next((t for t in tried if t.is_file()), None)
        if path is None:
            raise DataError(f"image {rel!r} of {split_file.name} not found; tried: " + ", ".join(str(t) for t in tried))
        records.append(ImageRecord(path, int(label), str(name), str(rel)))
    return class_names, records


def few_shot(records: Sequence[ImageRecord], shots: int, seed: int | random.Random) -> list[ImageRecord]:
    """K records per class, drawn as Dassl draws them (method.md section 5); all when ``shots`` <= 0.

    ``random.Random(seed)`` gives the same stream as ``random.seed(seed)`` followed by
    module-level calls. Classes are visited in order of first appearance (not sorted).
    ``seed`` may also be a ``random.Random`` to go on drawing from (see ``validation_records``).
    """
    if shots <= 0:
        return list(records)
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    by_label: dict[int, list[ImageRecord]] = {}  # insertion order = first appearance
    for r in records:
        by_label.setdefault(r.label, []).append(r)
    out: list[ImageRecord] = []
    for items in by_label.values():
        out.extend(rng.sample(items, shots) if len(items) >= shots else items)
    return out


VALIDATION_SHOTS_CAP = 4  # the reference's validation split: min(K, 4) images per class


def validation_records(train_records: Sequence[ImageRecord], val_records: Sequence[ImageRecord], shots: int,
                       seed: int) -> list[ImageRecord]:
    """A run's calibration images: min(K, 4) per class of the validation split (all when K <= 0), drawn as
    the reference draws them - from the same stream as the train draw, right after it, over every class
    (base-to-novel callers drop the novel classes afterwards, as for the train draw)."""
    rng = random.Random(seed)
    few_shot(train_records, shots, rng)  # the train draw, replayed: it advances the stream as the reference's did
    return few_shot(val_records, min(shots, VALIDATION_SHOTS_CAP), rng)


def load_pil(records: Sequence[ImageRecord]) -> list[Image.Image]:
    """Decode every record once (PNG/JPEG/TIFF/DICOM through ``imageio``); a bad file is a DataError naming it."""
    from .imageio import ImageLoadError

    images = []
    for r in records:
        try:
            images.append(load_image(r.path).image)
        except ImageLoadError as exc:
            raise DataError(f"cannot read {r.rel or r.path.name} ({r.path}): {exc}") from exc
    return images


@dataclass
class LabelledImages:
    """Decoded images with labels, small enough to keep in memory (few-shot sets)."""

    images: list[Image.Image]
    labels: torch.Tensor  # [N] long
    class_names: list[str]

    @classmethod
    def from_records(cls, records: Sequence[ImageRecord], class_names: Sequence[str]) -> "LabelledImages":
        return cls(load_pil(records), torch.tensor([r.label for r in records], dtype=torch.long), list(class_names))

    def __len__(self) -> int:
        return len(self.labels)

    def labels_only(self) -> "LabelledImages":
        """The same set without its pixels: fast-mode training steps read only the labels (the image
        features are cached), and a set that crosses a process boundary should not carry images."""
        return LabelledImages([], self.labels, self.class_names)

    def subset(self, indices: Sequence[int]) -> "LabelledImages":
        idx = list(indices)
        return LabelledImages([self.images[i] for i in idx], self.labels[idx], self.class_names)
