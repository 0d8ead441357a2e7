"""Few-shot adaptation without Gradio: upload checks, zip import, the training job, export.

Everything here is plain Python over ``dpt_core`` (data flow B of the design); the tab in
``app/fewshot_tab.py`` only wires it to components. ``FewShotError`` messages are written
for the person in front of the UI: short, no stack trace, no server paths.

Privacy: decoded images and their features exist only in memory while a training runs;
files (zip imports, checkpoints, export zips) go under the session's folder, which the app
deletes when the session ends. A checkpoint holds prompt tensors only (see ``tensor_names``).

Defaults and rules, and why:

- Held-out check: when every class has at least ``HELDOUT_MIN_PER_CLASS`` (4) images, a
  quarter of each class (at least one image) is held out, never trained on, and both the
  adapted and the zero-shot prompt are scored on it. Below 4 the held-out set would be one
  image per class taken from three or fewer, which removes a third of the training data to
  measure almost nothing; then everything is trained on and no accuracy is shown, because
  accuracy on training images is not a test.
- Training: the device's default from ``dpt_core.recipes.fewshot_config``: fast mode (image
  features of ``views`` augmented crops cached once, so a step runs only the text tower); on
  a CPU few large steps (the whole small upload per step) so that 4 classes x 8 images take
  about a minute with the full-size model; on a GPU the paper's 100 epochs and batch 4.
- Image features are computed once with eval preprocessing for all images; the training
  part feeds the ranked teacher and the first training view, and the held-out part serves
  both the adapted and the zero-shot check, so no image is encoded twice.
- A run is three kinds of call - ``prepare_run``, ``train_slice`` (as many as needed),
  ``finish_run`` - with picklable data in between and a ``Channel`` for progress and Stop,
  so that on ZeroGPU each is one GPU call that fits its slot (``app.device``); elsewhere
  they are plain calls. ``run_fewshot`` strings them together.
"""
from __future__ import annotations

import contextvars
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Generic, TypeVar

import torch
from PIL import Image

from dpt_core.backbone import Backbone
from dpt_core.calibration import Calibration, calibrate_features
from dpt_core.checkpoint import CheckpointError, read_folder, write_checkpoint
from dpt_core.data import LabelledImages
from dpt_core.descriptions import class_key
from dpt_core.evaluate import Evaluation
from dpt_core.features import encode_images
from dpt_core.hub import HubError, push_folder, valid_repo_id
from dpt_core.imageio import ImageLoadError, frame_pixels, load_image
from dpt_core.integrity import SEED_MAX
from dpt_core.limits import BudgetError, check_pixel_budget, check_upload_pixels
from dpt_core.losses import LossWeights
from dpt_core.predictor import check_class_names
from dpt_core.recipes import fewshot_config
from dpt_core.teacher import TEACHER_MODES, Teacher
from dpt_core.train import FitState, StepInfo, TrainConfig, finish_fit, fit_epochs
from dpt_core.visual import LAYOUTS, VisualPromptConfig
from dpt_core.workflow import (
    ClassSetup,
    TrainOutcome,
    evaluate_on,
    holdout_split,
    prepare_training,
    save_trained,
    zero_shot_model,
)

from .job_channel import Channel, MemoryChannel, Status

log = logging.getLogger(__name__)

MAX_SHORT_SIDE = 800  # uploads for training are reduced to this (see ``bounded``)
HELDOUT_MIN_PER_CLASS = 4  # every class needs this many images for a held-out check
HELDOUT_FRACTION = 0.25  # share of each class held out (at least one image)
# Defaults by device come from the library (dpt_core.recipes, chosen with bench/bench_fewshot.py).
# CPU: fast mode, batch 32, 90 epochs, 1 view (the centre crop). A fast step runs the text tower
# once over the class prompts whatever the batch size, so a batch that holds the whole upload
# (4 classes x 8 images leave 24 training images) makes each epoch one step: 90 steps, as many as
# 15 epochs of batch 4 made before, without the augmented-view pass, at higher held-out accuracy
# on the benchmark. GPU: the paper's 100 epochs and batch 4, 8 views.
CPU_CONFIG, GPU_CONFIG = fewshot_config("cpu"), fewshot_config("cuda")
CPU_DEFAULTS = (CPU_CONFIG.epochs, CPU_CONFIG.views)
GPU_DEFAULTS = (GPU_CONFIG.epochs, GPU_CONFIG.views)
DEFAULT_BATCH = CPU_CONFIG.batch_size
DEFAULT_LR = CPU_CONFIG.lr  # the paper's learning rate
DEFAULT_EPOCHS, DEFAULT_VIEWS = CPU_DEFAULTS
DEFAULT_SETTINGS_NOTE = (
    f"Defaults: fast mode (image features of a few views cached once). On a CPU {CPU_CONFIG.epochs} epochs x "
    f"{CPU_CONFIG.views} view (the centre crop) with batch {CPU_CONFIG.batch_size}: a small upload goes whole into "
    "each step, which costs the same as a step of 4 images (4 classes x 8 images take about a minute with the "
    f"full-size model on 2 cores). On a GPU the paper's {GPU_CONFIG.epochs} epochs and batch "
    f"{GPU_CONFIG.batch_size}, with {GPU_CONFIG.views} views. Learning rate {CPU_CONFIG.lr} as in the paper. "
    "More epochs or views cost time, not memory."
)


def default_batch(gpu: bool = False) -> int:
    """The batch size of the device's default (the tab has no field for it)."""
    return (GPU_CONFIG if gpu else CPU_CONFIG).batch_size


_READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError)
_JUNK_NAMES = {"thumbs.db", "desktop.ini"}


class FewShotError(ValueError):
    """Bad input or a failed step; ``str(err)`` is safe to show in the UI as is."""


class TrainingStopped(RuntimeError):
    """The user stopped before anything was trained (nothing was saved)."""


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
        raise FewShotError(f"At most {limits.max_per_class} images per class; too many for: " + ", ".join(too_many) + ".")
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


# --------------------------------------------------------------------------- zip import

@dataclass
class ZipImport:
    """The images of a zip, sorted into the classes by folder name."""

    class_names: list[str]
    files: list[list[Path]]  # per class, in class order (extracted under the session folder)
    unknown_folders: list[str]  # folders that match no class: their files are not used
    ignored: list[str]  # files outside any folder, or system files

    def report(self) -> str:
        counts = ", ".join(f"{n}: {len(f)}" for n, f in zip(self.class_names, self.files))
        lines = [f"Imported {sum(map(len, self.files))} images ({counts})."]
        empty = [n for n, f in zip(self.class_names, self.files) if not f]
        if empty:
            lines.append("No folder for: " + ", ".join(empty) + " - add their images on the cards below.")
        if self.unknown_folders:
            lines.append("Folders that match no class were skipped: " + ", ".join(self.unknown_folders)
                         + ". Folder names match class names after '_' -> space, ignoring case.")
        if self.ignored:
            lines.append(f"{len(self.ignored)} file(s) outside class folders were skipped.")
        return "\n\n".join(lines)


def import_zip(zip_path: str | Path, class_names: Sequence[str] | None, dest: str | Path,
               limits: Limits = LIMITS) -> ZipImport:
    """Check a zip with one folder per class, then decode and write its images under ``dest``.

    Nothing is written before every entry has been checked: names (no absolute paths, no
    ``..``, no links), count, total uncompressed size and per-member compression ratio (zip
    bombs), encryption. Members are then read with a cap of their declared size, so a header
    that lies about it cannot make us read more. With no ``class_names``, the folders are the
    classes (sorted).
    """
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        raise FewShotError("This is not a zip file the app can read.") from None
    with zf:
        infos = zf.infolist()
        _check_zip_entries(infos, limits)
        by_folder, ignored = _group_by_folder(infos)
        names, folder_label, unknown = _match_folders(list(by_folder), class_names, limits)
        files: list[list[Path]] = [[] for _ in names]
        members = [(info, folder_label[folder]) for folder, items in by_folder.items()
                   if folder in folder_label for info in items]
        counts = [sum(1 for _, lab in members if lab == c) for c in range(len(names))]
        too_many = [f"{n} ({k})" for n, k in zip(names, counts) if k > limits.max_per_class]
        if too_many:
            raise FewShotError(f"At most {limits.max_per_class} images per class; the zip has too many for: "
                               + ", ".join(too_many) + ".")
        out = Path(dest)
        _pixel_budget_of_members(zf, [info for info, _ in members])  # from headers, before decoding
        decoded = [(info, label, _read_image_member(zf, info)) for info, label in members]
        for info, label, data in decoded:
            folder = out / f"{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{len(files[label]):03d}_{_safe_name(info.filename)}"
            target.write_bytes(data)
            files[label].append(target)
    return ZipImport(names, files, unknown, ignored)


def _check_zip_entries(infos: Sequence[zipfile.ZipInfo], limits: Limits) -> None:
    if len(infos) > limits.max_zip_members:
        raise FewShotError(f"The zip has {len(infos)} entries; the limit is {limits.max_zip_members}.")
    unsafe = [i.filename for i in infos if _unsafe_name(i.filename)]
    if unsafe:
        raise FewShotError("The zip was refused: it has entries that point outside its own folder "
                           "(absolute paths or '..'): " + ", ".join(repr(u) for u in unsafe[:3]) + ".")
    links = [i.filename for i in infos if (i.external_attr >> 16) & 0o170000 == 0o120000]
    if links:
        raise FewShotError("The zip was refused: it contains symbolic links (" + ", ".join(links[:3]) + ").")
    if any(i.flag_bits & 0x1 for i in infos):
        raise FewShotError("The zip is password-protected; please upload an unencrypted zip.")
    total = sum(i.file_size for i in infos)
    if total > limits.max_total_bytes:
        raise FewShotError(f"The zip unpacks to {_mb(total)}; the limit is {_mb(limits.max_total_bytes)}.")
    for i in infos:
        if i.file_size >= limits.zip_ratio_floor and i.file_size > limits.max_zip_ratio * max(i.compress_size, 1):
            raise FewShotError(f"The zip was refused: '{Path(i.filename).name}' would unpack to {_mb(i.file_size)} "
                               f"from {_mb(i.compress_size)} (a 'zip bomb'). Images do not compress like that.")


def _unsafe_name(name: str) -> bool:
    n = name.replace("\\", "/")
    return (n.startswith("/") or bool(re.match(r"^[A-Za-z]:", n)) or "\x00" in n
            or any(part == ".." for part in n.split("/")))


def _is_junk(parts: Sequence[str]) -> bool:
    base = parts[-1]
    return "__MACOSX" in parts or base.startswith(".") or base.lower() in _JUNK_NAMES


def _group_by_folder(infos: Sequence[zipfile.ZipInfo]) -> tuple[dict[str, list[zipfile.ZipInfo]], list[str]]:
    """Files by the name of their immediate parent folder.

    Ignored: system files, files at the top level and files in wrapper folders (folders
    that hold other folders, e.g. ``export/`` in ``export/glioma/1.png``).
    """
    by_folder: dict[str, list[zipfile.ZipInfo]] = {}
    ignored: list[str] = []
    files = []
    for info in infos:
        if info.is_dir():
            continue
        parts = [p for p in info.filename.replace("\\", "/").split("/") if p]
        if _is_junk(parts) or len(parts) < 2:
            ignored.append(info.filename)
        else:
            files.append((info, tuple(parts[:-1])))
    wrappers = {parent[:k] for _, parent in files for k in range(1, len(parent))}
    for info, parent in files:
        if parent in wrappers:
            ignored.append(info.filename)
        else:
            by_folder.setdefault(parent[-1], []).append(info)
    for items in by_folder.values():
        items.sort(key=lambda i: i.filename)
    return by_folder, ignored


def _match_folders(folders: list[str], class_names: Sequence[str] | None,
                   limits: Limits) -> tuple[list[str], dict[str, int], list[str]]:
    """(class names, label of each matching folder, unknown folders)."""
    if not folders:
        raise FewShotError("The zip has no folders with images. Put each class's images in a folder named "
                           "after the class, e.g. glioma_tumor/scan1.png.")
    if not class_names:  # custom classes from the folders themselves
        names = parse_class_names("\n".join(f.replace("_", " ") for f in sorted(folders)), limits)
        return names, {f: i for i, f in enumerate(sorted(folders))}, []
    by_key = {class_key(c): i for i, c in enumerate(class_names)}
    label = {f: by_key[class_key(f)] for f in folders if class_key(f) in by_key}
    unknown = sorted(f for f in folders if f not in label)
    if not label:
        raise FewShotError("No folder in the zip matches a class. Folders: " + ", ".join(sorted(folders)[:8])
                           + "; classes: " + ", ".join(class_names) + ". Rename the folders, or choose "
                           "'Custom classes' with an empty class list to take the folders as classes.")
    return list(class_names), label, unknown


def _pixel_budget_of_members(zf: zipfile.ZipFile, infos: Sequence[zipfile.ZipInfo]) -> None:
    def pixels(info: zipfile.ZipInfo) -> int:
        try:
            with zf.open(info) as fh:
                return frame_pixels(fh.read(info.file_size + 1))
        except (ImageLoadError, *_READ_ERRORS):
            return 0  # reported by the decode that follows

    try:
        check_pixel_budget(pixels(i) for i in infos)
    except BudgetError as exc:
        raise FewShotError(f"The zip was refused: {exc}.") from None


def _read_image_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    name = Path(info.filename).name
    try:
        with zf.open(info) as fh:
            data = fh.read(info.file_size + 1)  # never more than the directory promised
    except _READ_ERRORS:
        raise FewShotError(f"'{name}' in the zip is damaged and cannot be read.") from None
    if len(data) != info.file_size:
        raise FewShotError(f"'{name}' in the zip is not the size its directory says; the zip is damaged.")
    try:
        load_image(data)  # only images get in: decoded, not judged by extension
    except ImageLoadError as err:
        raise FewShotError(f"'{info.filename}' in the zip is not an image the app can read "
                           f"({str(err).removeprefix('Could not read the image: ')}).") from None
    return data


def _safe_name(filename: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"[^\w.\-]+", "_", base)[-80:] or "image"


# --------------------------------------------------------------------------- training settings

@dataclass(frozen=True)
class TrainSettings:
    """What the Advanced accordion sets; ``from_setup`` gives the defaults for a class setup."""

    epochs: int = DEFAULT_EPOCHS
    views: int = DEFAULT_VIEWS
    lr: float = DEFAULT_LR
    batch_size: int = DEFAULT_BATCH
    l1: float = 0.0
    kl: float = 0.0
    teacher: str = "mean"
    layout: str = "reference"
    seed: int = 1

    @classmethod
    def from_setup(cls, setup: ClassSetup, gpu: bool = False, **overrides) -> TrainSettings:
        d = GPU_CONFIG if gpu else CPU_CONFIG
        base = cls(epochs=d.epochs, views=d.views, lr=d.lr, batch_size=d.batch_size, l1=setup.loss_weights.l1,
                   kl=setup.loss_weights.kl)
        return replace(base, **overrides)

    def checked(self) -> TrainSettings:
        """Coerced to the right types and checked; problems become one readable message."""
        try:
            s = replace(self, epochs=int(self.epochs), views=int(self.views), lr=float(self.lr),
                        batch_size=int(self.batch_size), l1=float(self.l1), kl=float(self.kl), seed=int(self.seed))
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
            raise FewShotError("Advanced settings: every field needs a number.") from None
        problems = []
        if not 1 <= s.epochs <= 200:
            problems.append("epochs must be between 1 and 200")
        if not 1 <= s.views <= 16:
            problems.append("views per image must be between 1 and 16")
        if not 0 < s.lr <= 1 or not math.isfinite(s.lr):
            problems.append("the learning rate must be above 0 and at most 1")
        if s.l1 < 0 or s.kl < 0 or not (math.isfinite(s.l1) and math.isfinite(s.kl)):
            problems.append("loss weights must be 0 or more")
        if not 0 <= s.seed <= SEED_MAX:
            problems.append(f"the seed must be between 0 and {SEED_MAX}")
        if s.teacher not in TEACHER_MODES:
            problems.append(f"teacher must be one of {', '.join(TEACHER_MODES)}")
        if s.layout not in LAYOUTS:
            problems.append(f"visual prompt layout must be one of {', '.join(LAYOUTS)}")
        if problems:
            raise FewShotError("Advanced settings: " + "; ".join(problems) + ".")
        return s

    def train_config(self) -> TrainConfig:
        # center_view: view 0 is the centre crop whose features the held-out check needs anyway,
        # so "2 views" costs one augmented image pass, not two.
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, mode="fast",
                           views=self.views, center_view=True, seed=self.seed,
                           loss_weights=LossWeights(self.l1, self.kl))

    def visual(self) -> VisualPromptConfig:
        return VisualPromptConfig(layout=self.layout)


# --------------------------------------------------------------------------- the training run

Reporter = Callable[[Status], None]


@dataclass
class HeldOutCheck:
    """Adapted vs zero-shot prompt on the same held-out images (never trained on)."""

    adapted: Evaluation
    zero_shot: Evaluation

    @property
    def n_images(self) -> int:
        return self.adapted.n

    @property
    def per_class_counts(self) -> list[int]:
        return [sum(row) for row in self.adapted.confusion_matrix]  # rows: true class


@dataclass
class FewShotResult:
    folder: Path
    class_names: list[str]
    preset: str | None
    n_images: int
    n_train: int
    settings: TrainSettings
    history: list[dict]
    stopped: bool
    check: HeldOutCheck | None
    no_check_reason: str  # why there is no held-out check ("" when there is one)
    timings: dict[str, float]
    random_weights: bool
    calibration: Calibration | None = None  # fitted on the held-out images; None without a held-out check

    @property
    def epochs_completed(self) -> int:
        return len(self.history)


def plan_holdout(labels: torch.Tensor, seed: int = 0) -> tuple[list[int], list[int]] | None:
    """(train idx, held-out idx) when every class has >= HELDOUT_MIN_PER_CLASS images, else None."""
    return holdout_split(labels, HELDOUT_FRACTION, HELDOUT_MIN_PER_CLASS, seed)


def no_check_reason(labels: torch.Tensor, class_names: Sequence[str]) -> str:
    counts = torch.bincount(labels, minlength=len(class_names)).tolist()
    fewest = min(range(len(counts)), key=counts.__getitem__)
    return (f"No held-out check: that needs at least {HELDOUT_MIN_PER_CLASS} images in every class "
            f"(fewest: {counts[fewest]} for '{class_names[fewest]}'). The prompt was trained on all "
            f"{len(labels)} images. No accuracy is shown, because accuracy on the training images is not a test.")


class _StepTracker:
    """Turns fit's per-step callbacks into Status snapshots (the plot reads the completed epochs)."""

    def __init__(self, report: Reporter, started: float):
        self.report, self.started = report, started  # started: time.time() (calls may be in other processes)

    def __call__(self, info: StepInfo) -> None:
        done = info.epoch * info.steps_per_epoch + info.step + 1
        total = info.epochs * info.steps_per_epoch
        elapsed = time.time() - self.started
        text = (f"Training: epoch {info.epoch + 1}/{info.epochs}, step {info.step + 1}/{info.steps_per_epoch} "
                f"- loss {info.loss['total']:.3f} - {elapsed:.0f} s")
        self.report(Status("training", text, done / total, info.history, elapsed))


@dataclass
class Prepared:
    """What the first call of a run hands to the later ones. CPU tensors only: it pickles."""

    features: torch.Tensor  # [N, E] centre-crop features of every image, computed once
    labels: torch.Tensor  # [N]
    train_idx: list[int]
    held_idx: list[int]
    train: LabelledImages  # the training part without its pixels: the views' features are in the fit state
    teacher: Teacher
    state: FitState | None  # the started fit; the run takes it out (it travels on its own)
    started: float  # time.time() when the run started
    timings: dict[str, float]


def prepare_run(backbone: Backbone, setup: ClassSetup, data: LabelledImages, settings: TrainSettings,
                channel: Channel) -> Prepared:
    """First call: encode every image once, split, build the teacher, cache the augmented views."""
    started = time.time()
    settings = settings.checked()
    zero = zero_shot_model(backbone, setup, settings.visual())
    channel.report(Status("encoding", f"Encoding {len(data)} images...", elapsed_s=time.time() - started))
    t = time.perf_counter()
    try:
        feats = encode_images(zero, data.images, should_stop=channel.stop_requested)  # eval preprocessing, once
    except InterruptedError:
        raise TrainingStopped("Stopped before training started; nothing was saved.") from None
    timings = {"encode_s": time.perf_counter() - t}
    split = plan_holdout(data.labels, settings.seed)
    train_idx, held_idx = split if split else (list(range(len(data))), [])
    channel.report(Status("views", f"Preparing the centre crop and {settings.views - 1} augmented view(s) of "
                                   f"{len(train_idx)} training images...", elapsed_s=time.time() - started))
    train = data.subset(train_idx)
    _, teacher, state = prepare_training(backbone, setup, train, settings.train_config(), settings.teacher,
                                         settings.visual(), channel.stop_requested, feats[train_idx])
    timings["views_s"] = state.feature_seconds
    return Prepared(feats.cpu(), data.labels, train_idx, held_idx, train.labels_only(), teacher.to("cpu"), state,
                    started, timings)


def train_slice(backbone: Backbone, setup: ClassSetup, settings: TrainSettings, prepared: Prepared,
                state: FitState, budget_s: float | None, channel: Channel) -> FitState:
    """One call's share of the epochs (all of them when ``budget_s`` is None)."""
    settings = settings.checked()
    model = zero_shot_model(backbone, setup, settings.visual())
    return fit_epochs(model, prepared.train, prepared.teacher.to(backbone.device), settings.train_config(), state,
                      on_step=_StepTracker(channel.report, prepared.started),
                      should_stop=channel.stop_requested, budget_s=budget_s)


def finish_run(backbone: Backbone, setup: ClassSetup, settings: TrainSettings, prepared: Prepared,
               state: FitState, out_dir: str | Path, data_description: str, channel: Channel) -> FewShotResult:
    """Last call: the kept context, the held-out check against the zero-shot prompt, the checkpoint."""
    settings = settings.checked()
    config = settings.train_config()
    model = zero_shot_model(backbone, setup, settings.visual())
    fit_result = finish_fit(model, state)
    teacher = prepared.teacher.to(backbone.device)
    timings = dict(prepared.timings)
    check, calibration = None, None
    if prepared.held_idx:
        channel.report(Status("checking", "Held-out check...", 1.0, elapsed_s=time.time() - prepared.started))
        t = time.perf_counter()
        held_feats = prepared.features[prepared.held_idx].to(backbone.device)
        held_labels = prepared.labels[prepared.held_idx]
        zero = zero_shot_model(backbone, setup, settings.visual())
        check = HeldOutCheck(
            adapted=evaluate_on(model, held_feats, held_labels, teacher, config.loss_weights),
            zero_shot=evaluate_on(zero, held_feats, held_labels, teacher, config.loss_weights),
        )
        calibration = calibrate_features(model, held_feats, held_labels,
                                         source=f"{len(held_labels)} images held out of few-shot training")
        timings["check_s"] = time.perf_counter() - t
    reason = "" if check else no_check_reason(prepared.labels, setup.class_names)
    channel.report(Status("saving", "Saving the checkpoint...", 1.0, elapsed_s=time.time() - prepared.started))
    outcome = TrainOutcome(model, teacher, fit_result, len(prepared.train_idx))
    folder = save_trained(out_dir, outcome, setup, config,
                          _metrics(check, reason, fit_result.stopped, len(fit_result.history)),
                          data_description=data_description.strip(), calibration=calibration)
    return FewShotResult(
        folder=Path(folder), class_names=list(setup.class_names),
        preset=setup.preset.name if setup.preset else None, n_images=len(prepared.labels),
        n_train=len(prepared.train_idx), settings=settings, history=list(fit_result.history),
        stopped=fit_result.stopped, check=check, no_check_reason=reason, timings=timings,
        random_weights=bool(backbone.random_weights), calibration=calibration,
    )


@dataclass(frozen=True)
class Phases:
    """The three calls of a run, each bound to where it runs (see ``in_process`` and ``app.device``)."""

    prepare: Callable[[ClassSetup, LabelledImages, TrainSettings, Channel], Prepared]
    train: Callable[[ClassSetup, TrainSettings, Prepared, FitState, float | None, Channel], FitState]
    finish: Callable[[ClassSetup, TrainSettings, Prepared, FitState, Path, str, Channel], FewShotResult]


def in_process(backbone: Backbone) -> Phases:
    """The three calls as plain calls in this process."""
    return Phases(partial(prepare_run, backbone), partial(train_slice, backbone), partial(finish_run, backbone))


def run_fewshot(
    where: Backbone | Phases,
    setup: ClassSetup,
    data: LabelledImages,
    settings: TrainSettings,
    out_dir: str | Path,
    data_description: str = "",
    channel: Channel | None = None,
    slice_s: float | None = None,
) -> FewShotResult:
    """Encode once, split, train, check against the zero-shot prompt, save the checkpoint.

    ``where``: a backbone (everything in this process) or ``Phases`` (e.g. GPU calls).
    ``slice_s``: seconds of training per call (None: all epochs in one call); the
    result is the same however the epochs are cut (``dpt_core.train.fit_epochs``).
    """
    phases = where if isinstance(where, Phases) else in_process(where)
    channel = channel or MemoryChannel()
    settings = settings.checked()
    start = time.perf_counter()
    prepared = phases.prepare(setup, data, settings, channel)
    state, prepared = prepared.state, replace(prepared, state=None)  # the views are not sent twice per call
    t = time.perf_counter()
    calls = 0
    while not state.finished:
        state = phases.train(setup, settings, prepared, state, slice_s, channel)
        calls += 1
    fit_s = time.perf_counter() - t  # the epochs only: the views are cached in the preparation
    result = phases.finish(setup, settings, prepared, state, out_dir, data_description, channel)
    result.timings.update(fit_s=fit_s, total_s=time.perf_counter() - start, training_calls=calls)
    log.info("few-shot training: %d images, %d epochs in %d call(s), %.1f s (encode %.1f, epochs %.1f)",
             result.n_images, result.epochs_completed, calls, result.timings["total_s"],
             result.timings["encode_s"], fit_s)
    return result


def _metrics(check: HeldOutCheck | None, reason: str, stopped: bool, epochs_done: int = 1) -> dict:
    """What the model card reports, with its caveats spelled out."""
    caveat = ("Few-shot result from a handful of images uploaded in one session; not a clinical "
              "validation. Accuracy on so few images changes by a large step with each image.")
    if stopped and epochs_done == 0:
        caveat += (" Training was stopped before its first epoch completed: the prompt is the untrained "
                   "(zero-shot) clinical template.")
    elif stopped:
        caveat += " Training was stopped early; the best completed epoch (lowest mean loss) was kept."
    if check is None:
        return {"heldout_check": reason, "caveat": caveat}
    return {
        "heldout_images": check.n_images,
        "heldout_rule": f"{HELDOUT_FRACTION:.0%} of each class (at least one image) held out when every class "
                        f"has >= {HELDOUT_MIN_PER_CLASS} images",
        "heldout_accuracy": round(check.adapted.accuracy, 4),
        "zero_shot_heldout_accuracy": round(check.zero_shot.accuracy, 4),
        "heldout_per_class": _rounded(check.adapted.per_class),
        "zero_shot_heldout_per_class": _rounded(check.zero_shot.per_class),
        "caveat": caveat,
    }


def _rounded(per_class: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (None if v is None else round(v, 4)) for k, v in per_class.items()}


# --------------------------------------------------------------------------- jobs: thread, stop, one at a time

T = TypeVar("T")


class TrainingJob(Generic[T]):
    """Runs ``work(channel)`` on a thread; the UI polls ``status`` and may ``stop()``.

    Stopping is cooperative: the channel's stop flag is polled by ``fit`` before every
    step (and between feature batches), so the work ends at a step boundary with the
    best state so far; no thread or process is ever killed. With a ``lock``, the job
    first waits for it (one training per process) and reports that it is waiting.
    ``channel``: a ``FileChannel`` when steps may run in another process (ZeroGPU).
    """

    def __init__(self, work: Callable[[Channel], T], lock: threading.Lock | None = None,
                 channel: Channel | None = None):
        self._work, self._lock = work, lock
        self.channel: Channel = channel if channel is not None else MemoryChannel()
        self._done = threading.Event()
        self.channel.report(Status("waiting", "Starting..."))
        self.result: T | None = None
        self.error: BaseException | None = None
        # The thread runs in a copy of the caller's context: per-request context (e.g. what
        # ZeroGPU's decorator reads to account GPU time) follows the work onto the thread.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), name="fewshot-train", daemon=True)

    def start(self) -> TrainingJob[T]:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.channel.request_stop()

    @property
    def stop_requested(self) -> bool:
        return self.channel.stop_requested()

    @property
    def status(self) -> Status:
        return self.channel.status() or Status("waiting", "Starting...")

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job has finished (result or error set)."""
        return self._done.wait(timeout)

    def _report(self, status: Status) -> None:
        self.channel.report(status)

    def _run(self) -> None:
        acquired = False
        try:
            if self._lock is not None:
                acquired = self._acquire()
                if not acquired:
                    raise TrainingStopped("Stopped while waiting; nothing was trained.")
            self.result = self._work(self.channel)
        except BaseException as exc:  # noqa: BLE001 - handed to the UI thread, which words it
            self.error = exc
        finally:
            if acquired:
                self._lock.release()
            self._done.set()

    def _acquire(self) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        self._report(Status("waiting", "Waiting for another training to finish (one at a time)..."))
        while not self.channel.stop_requested():
            if self._lock.acquire(timeout=0.2):
                return True
        return False


class JobRegistry:
    """The job of each session (keyed by Gradio's session hash), so Stop finds it.

    A request waiting in Gradio's queue has no job yet: ``enqueue`` records it, so that
    Stop can cancel it before it starts (``dequeue`` tells the Train handler).
    """

    def __init__(self) -> None:
        self._jobs: dict[str, TrainingJob] = {}
        self._queued: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def enqueue(self, key: str) -> None:
        with self._lock:
            self._queued[key] = threading.Event()

    def dequeue(self, key: str) -> bool:
        """Forget the queued request; True when Stop cancelled it meanwhile."""
        with self._lock:
            flag = self._queued.pop(key, None)
        return flag is not None and flag.is_set()

    def add(self, key: str, job: TrainingJob) -> None:
        with self._lock:
            old = self._jobs.get(key)
            if old is not None and not old.wait(0):
                raise FewShotError("A training of this session is still running; stop it or wait for it.")
            self._jobs[key] = job

    def stop(self, key: str) -> bool:
        """Ask the session's job to stop (or its queued request not to start); False when there is none."""
        with self._lock:
            job = self._jobs.get(key)
            queued = self._queued.get(key)
        if job is not None and not job.wait(0):
            job.stop()
            return True
        if queued is not None:
            queued.set()
            return True
        return False

    def busy(self, key: str) -> bool:
        """Whether this session has a job that has not finished."""
        with self._lock:
            job = self._jobs.get(key)
        return job is not None and not job.wait(0)

    def remove(self, key: str, job: TrainingJob) -> None:
        with self._lock:
            if self._jobs.get(key) is job:
                del self._jobs[key]

    def running(self) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if not j.wait(0))


JOBS = JobRegistry()


# --------------------------------------------------------------------------- export

def new_checkpoint_dir(session_dir: str | Path, preset: str | None) -> Path:
    """A fresh folder name under the session's folder (not created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(session_dir) / "fewshot" / f"biomed-dpt-{preset or 'custom'}-{stamp}-{uuid.uuid4().hex[:6]}"


def zip_checkpoint(folder: str | Path, dest: str | Path | None = None) -> Path:
    """The checkpoint folder as ``<folder name>.zip`` (next to it unless ``dest``), files inside ``<name>/``."""
    folder = Path(folder)
    dest = Path(dest) if dest else folder.with_suffix(".zip")
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                zf.write(path, f"{folder.name}/{path.name}")
    return dest


def set_data_description(folder: str | Path, text: str) -> None:
    """Rewrite config.json and the model card with a new training-data description."""
    try:
        ckpt = read_folder(folder)
    except CheckpointError as exc:
        raise FewShotError(f"The checkpoint cannot be read any more ({exc}).") from None
    ckpt.config["data_description"] = (text or "").strip()
    write_checkpoint(ckpt, folder)


def tensor_names(folder: str | Path) -> dict[str, list[int]]:
    """Tensor names and shapes in a checkpoint's prompts.safetensors (what leaves the session)."""
    return {k: list(v.shape) for k, v in read_folder(folder).tensors.items()}


def push_checkpoint(folder: str | Path, repo_id: str, token: str | None, private: bool = True) -> str:
    """Upload the folder with its model card; returns the repo URL. The token is never stored or logged."""
    repo_id = (repo_id or "").strip()
    if not token:
        raise FewShotError("Pushing needs a Hugging Face token with write access (or log in on Spaces).")
    if not valid_repo_id(repo_id):  # checked here too, to word it for the form
        raise FewShotError("Name the repository as ORG/NAME, e.g. your-name/biomed-dpt-btmri.")
    try:
        return push_folder(folder, repo_id, token=token, private=private)
    except HubError as exc:
        raise FewShotError(f"Push failed: {exc}.") from None


def clear_dir(path: str | Path) -> None:
    """Remove a folder of this session (old zip imports); missing is fine."""
    shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "DEFAULT_SETTINGS_NOTE",
    "HELDOUT_FRACTION",
    "HELDOUT_MIN_PER_CLASS",
    "JOBS",
    "LIMITS",
    "CardSummary",
    "FewShotError",
    "FewShotResult",
    "HeldOutCheck",
    "JobRegistry",
    "Limits",
    "Status",
    "TrainSettings",
    "TrainingJob",
    "TrainingStopped",
    "ZipImport",
    "check_consent",
    "clear_dir",
    "import_zip",
    "load_class_images",
    "new_checkpoint_dir",
    "parse_class_names",
    "plan_holdout",
    "push_checkpoint",
    "run_fewshot",
    "set_data_description",
    "split_class_text",
    "summarize_card",
    "tensor_names",
    "zip_checkpoint",
]
