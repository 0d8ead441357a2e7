"""Few-shot uploads: the class list, the images of each card, their checks and limits.

``FewShotError`` messages are written for the person in front of the UI: short, no stack
trace, no server paths. Decoded images exist only in memory while a training runs.
"""
from __future__ import annotations

import logging
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from dpt_core.data import LabelledImages
from dpt_core.errors import FewShotError
from dpt_core.fewshot import CPU_CONFIG, GPU_CONFIG
from dpt_core.imageio import ImageLoadError, load_image
from dpt_core.limits import BudgetError, check_upload_pixels
from dpt_core.predictor import check_class_names

log = logging.getLogger(__name__)

MAX_SHORT_SIDE = 800  # uploads for training are reduced to this (see ``bounded``)
DEFAULT_SETTINGS_NOTE = (
    f"Defaults: fast mode (image features of a few views cached once). On a CPU {CPU_CONFIG.epochs} epochs x "
    f"{CPU_CONFIG.views} view (the centre crop) with batch {CPU_CONFIG.batch_size}: a small upload goes whole into "
    "each step, which costs the same as a step of 4 images (4 classes x 8 images take about a minute with the "
    f"full-size model on 2 cores). On a GPU the paper's {GPU_CONFIG.epochs} epochs and batch "
    f"{GPU_CONFIG.batch_size}, with {GPU_CONFIG.views} views. Learning rate {CPU_CONFIG.lr} as in the paper. "
    "More epochs or views cost time, not memory."
)
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError)
_JUNK_NAMES = {"thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class Limits:
    """Upload limits. The UI has one card per class, hence ``max_classes``."""

    max_classes: int = 8  # class cards in the tab; every shipped preset has at most 8 classes
    max_per_class: int = 32  # few-shot means few: more than 32 per class belongs in the CLI
    max_total_bytes: int = 200 * 2**20  # all uploads (or the zip's uncompressed content) together
    max_zip_members: int = 1024  # entries in a zip, folders included
    max_zip_ratio: float = 100.0  # uncompressed / compressed size of one member: above is a zip bomb
    zip_ratio_floor: int = 2**20  # members smaller than this cannot hurt, whatever their ratio


LIMITS = Limits()


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def _bullets(items: Sequence[str], limit: int = 6) -> str:
    shown = [f"- {s}" for s in items[:limit]]
    if len(items) > limit:
        shown.append(f"- ... and {len(items) - limit} more")
    return "\n".join(shown)


# --------------------------------------------------------------------------- classes and uploads

def split_class_text(text: str | None) -> list[str]:
    """The non-empty entries of a class textbox: one per line, or comma-separated on a single line."""
    raw = (text or "").strip()
    lines = raw.splitlines() if "\n" in raw else raw.split(",")
    return [ln.strip() for ln in lines if ln.strip()]


def parse_class_names(text: str | None, limits: Limits = LIMITS) -> list[str]:
    """Checked class names from a textbox (see ``split_class_text``)."""
    names = split_class_text(text)
    try:
        names = check_class_names(names)
    except ValueError as exc:
        raise FewShotError(f"Classes: {exc}.") from None
    if len(names) > limits.max_classes:
        raise FewShotError(f"This tab takes at most {limits.max_classes} classes (one card each); got "
                           f"{len(names)}. Use `python -m dpt_core train` for more.")
    return names


@dataclass
class CardSummary:
    """What a class card shows: small thumbnails and a count line."""

    thumbnails: list[tuple[object, str]]  # (PIL image, caption)
    n_images: int
    problems: list[str]

    def text(self, limits: Limits = LIMITS) -> str:
        n = self.n_images
        line = f"{n} image{'s' if n != 1 else ''}"
        if n > limits.max_per_class:
            line += f" - too many, at most {limits.max_per_class}"
        if self.problems:
            line += f"; {len(self.problems)} unreadable:\n" + _bullets(self.problems, 3)
        return line


def summarize_card(paths: Sequence[str] | None, thumb_px: int = 96) -> CardSummary:
    """Decode each upload once for a thumbnail; unreadable files are listed, not raised."""
    try:
        _pixel_budget(list(paths or []))
    except FewShotError as err:  # over budget: nothing is decoded, the card says why
        return CardSummary([], 0, [str(err)])
    thumbs, problems = [], []
    for p in paths or []:
        try:
            im = load_image(p).image
        except ImageLoadError as err:
            problems.append(str(err))
            continue
        im.thumbnail((thumb_px, thumb_px))
        thumbs.append((im, Path(p).name))
    return CardSummary(thumbs, len(thumbs), problems)


def _pixel_budget(paths: Sequence[str]) -> None:
    """The decoded-pixel budget of one upload batch, checked from headers before decoding."""
    try:
        check_upload_pixels(paths)
    except BudgetError as exc:
        raise FewShotError(f"{str(exc)[0].upper()}{str(exc)[1:]}.") from None


def check_consent(consent: bool) -> None:
    if not consent:
        raise FewShotError("Please confirm that the images are de-identified and that you may use them "
                           "(the checkbox above the Train button).")


def load_class_images(class_names: Sequence[str], files_per_class: Sequence[Sequence[str] | None],
                      limits: Limits = LIMITS) -> LabelledImages:
    """Validate the uploads of every class and decode them (PNG/JPEG/TIFF/DICOM/...)."""
    files = [list(f or []) for f in files_per_class] + [[]] * max(0, len(class_names) - len(files_per_class))
    files = files[:len(class_names)]
    missing = [n for n, f in zip(class_names, files) if not f]
    if missing:
        raise FewShotError("Every class needs at least one image. No image yet for: " + ", ".join(missing) + ".")
    too_many = [f"{n} ({len(f)})" for n, f in zip(class_names, files) if len(f) > limits.max_per_class]
    if too_many:
        raise FewShotError(f"At most {limits.max_per_class} images per class; too many for: "
                           + ", ".join(too_many) + ".")
    total = sum(_size(p) for f in files for p in f)
    if total > limits.max_total_bytes:
        raise FewShotError(f"The uploads add up to {_mb(total)}; the limit is {_mb(limits.max_total_bytes)}.")
    _pixel_budget([p for f in files for p in f])
    images, labels, problems = [], [], []
    for label, (name, paths) in enumerate(zip(class_names, files)):
        for p in paths:
            try:
                images.append(bounded(load_image(p).image))
                labels.append(label)
            except ImageLoadError as err:
                problems.append(f"{name}: {err}")
    if problems:
        raise FewShotError("Some files are not images the app can read (PNG, JPEG, TIFF, BMP, WEBP, GIF or "
                           "DICOM). Remove them and try again:\n" + _bullets(problems))
    return LabelledImages(images, torch.tensor(labels, dtype=torch.long), list(class_names))


def bounded(image: Image.Image, max_short_side: int = MAX_SHORT_SIDE) -> Image.Image:
    """The image reduced so that its short side is at most ``max_short_side`` (unchanged if already).

    The model sees 224 px crops; the smallest crop training draws (RandomResizedCrop, 8% of
    the area) of an 800 px image is still about 226 px, so no crop is ever enlarged, while a
    session's images stay small in memory and in what a GPU call receives (a 3000 px DICOM
    decodes to 27 MB).
    """
    short = min(image.size)
    if short <= max_short_side:
        return image
    scale = max_short_side / short
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0  # a vanished file is reported when it is decoded
