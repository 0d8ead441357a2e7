"""One zip with a folder per class -> the images sorted into the Few-shot cards (with the upload limits)."""
from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dpt_core.data import folder_labels, folders_as_classes
from dpt_core.errors import FewShotError
from dpt_core.imageio import ImageLoadError, frame_pixels, load_image
from dpt_core.limits import BudgetError, check_pixel_budget

from .uploads import _JUNK_NAMES, _READ_ERRORS, LIMITS, Limits, _mb, parse_class_names

log = logging.getLogger(__name__)

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
    if not class_names:  # custom classes from the folders themselves, checked as typed ones are
        names, label = folders_as_classes(folders)
        return parse_class_names("\n".join(names), limits), label, []
    label = folder_labels(folders, class_names)
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
