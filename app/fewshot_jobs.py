"""Few-shot adaptation in the app: upload checks, zip import, the training job, export.

Plain Python over ``dpt_core`` (data flow B of the design); the tab in ``app/fewshot_tab.py``
only wires it to components. The run itself (phases, settings, held-out check) is
``dpt_core.fewshot``, which ``python -m dpt_core train --holdout`` runs too; this module
carries its progress and Stop through a ``Channel`` (``app.job_channel``).
``FewShotError`` messages are written for the person in front of the UI: short, no stack
trace, no server paths.

Privacy: decoded images and their features exist only in memory while a training runs;
files (zip imports, checkpoints, export zips) go under the session's folder, which the app
deletes when the session ends. A checkpoint holds prompt tensors only (see ``tensor_names``).
"""
from __future__ import annotations

import contextvars
import logging
import os
import re
import shutil
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch
from PIL import Image

from dpt_core import fewshot
from dpt_core.backbone import Backbone
from dpt_core.checkpoint import CheckpointError, read_folder, write_checkpoint
from dpt_core.data import LabelledImages
from dpt_core.descriptions import class_key
from dpt_core.errors import FewShotError, TrainingStopped
from dpt_core.fewshot import (  # noqa: F401  (the app's names for the run's pieces)
    CPU_DEFAULTS,
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_VIEWS,
    GPU_DEFAULTS,
    HELDOUT_FRACTION,
    HELDOUT_MIN_PER_CLASS,
    FewShotResult,
    HeldOutCheck,
    Phases,
    Prepared,
    TrainSettings,
    finish_run,
    in_process,
    no_check_reason,
    plan_holdout,
    prepare_run,
    train_slice,
)
from dpt_core.hub import HubError, push_folder, valid_repo_id
from dpt_core.imageio import ImageLoadError, load_image
from dpt_core.predictor import check_class_names
from dpt_core.workflow import ClassSetup

from .job_channel import Channel, MemoryChannel, Status

log = logging.getLogger(__name__)

MAX_SHORT_SIDE = 800  # uploads for training are reduced to this (see ``bounded``)
DEFAULT_SETTINGS_NOTE = (
    "Defaults: fast mode (image features of a few augmented views cached once), batch 4 and learning "
    "rate 0.0025 as in the paper, but fewer epochs than its 100: on a CPU 15 epochs x 2 views (4 classes "
    "x 8 images take about a minute with the full-size model on 2 cores, half of it encoding the images), "
    "on a GPU 50 epochs x 4 views (seconds). More epochs or views cost time, not memory."
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


# --------------------------------------------------------------------------- the training run (dpt_core.fewshot)

Reporter = Callable[[Status], None]


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
    """``dpt_core.fewshot.run_fewshot`` with its progress and stop carried by a ``Channel``."""
    channel = channel or MemoryChannel()
    return fewshot.run_fewshot(where, setup, data, settings, out_dir, data_description, channel.report,
                               channel.stop_requested, slice_s)


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
