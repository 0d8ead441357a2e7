"""Regenerate the example images in assets/examples/ from files that ship inside installed packages.

    python assets/examples/make_examples.py

Every image comes from a package installed with the demo's requirements (pydicom,
pydicom-data, scikit-image), so the provenance is reproducible offline: the table
EXAMPLES below is the single source of truth for the PNGs, the copied DICOM files,
examples.json and SOURCES.md. Images go through dpt_core.imageio.load_image, the same
decoder the app uses, and are shrunk to at most MAX_SIDE pixels per side.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run as a script from anywhere in the checkout

from dpt_core.imageio import load_image  # noqa: E402

log = logging.getLogger("make_examples")

MAX_SIDE = 512
MAX_DICOM_BYTES = 200_000  # DICOM originals larger than this are not copied

PYDICOM = "pydicom 3.x (MIT licence): pydicom/data/test_files"
PYDICOM_DATA = "pydicom-data 1.0.0 (MIT licence), found by pydicom.data.get_testdata_file: data_store/data"
NEMA_WG04 = (
    "NEMA DICOM WG-04 compression sample set (ftp://medical.nema.org/MEDICAL/Dicom/DataSets/WG04/), "
    "as recorded in pydicom's test_files/README.txt; synthetic names (CompressedSamples^...)"
)


@dataclass(frozen=True)
class Example:
    stem: str  # output name without extension
    title: str
    modality: str
    preset: str | None  # a preset of assets/presets/ this image is plausible input for, or None
    package: str  # "pydicom" (test data, incl. pydicom-data) or "skimage"
    name: str  # file name inside the package
    source: str  # package and location, for examples.json / SOURCES.md
    licence: str  # licence/provenance as the package states it
    shows: str  # one line for SOURCES.md
    copy_dicom: bool = False
    max_side: int = MAX_SIDE  # smaller for noisy colour images, to keep the folder small


EXAMPLES: tuple[Example, ...] = (
    Example(
        "retina_fundus", "Fundus photograph, normal left eye", "fundus photography", "retina",
        "skimage", "retina.jpg", "scikit-image (BSD-3-Clause), skimage/data/retina.jpg via skimage.data.retina()",
        "CC0 1.0 (public domain), Wikimedia Commons 'Fundus photograph of normal left eye' "
        "(M. Häggström), as stated in the skimage.data.retina docstring",
        "Colour fundus photograph of a normal left eye (optic disc, macula, vessels)",
        max_side=384,
    ),
    Example(
        "colon_ihc_histology", "Colonic glands, IHC (DAB) with hematoxylin", "histopathology", "chmnist",
        "skimage", "ihc.png", "scikit-image (BSD-3-Clause), skimage/data/ihc.png via skimage.data.immunohistochemistry()",
        "'No known copyright restrictions', acquired at the Center for Microscopy And Molecular Imaging "
        "(CMMI), as stated in the skimage.data.immunohistochemistry docstring",
        "Colonic glands, immunohistochemistry for FHL2 (brown DAB) with hematoxylin counterstain; "
        "note: IHC, not the H&E staining of the histology presets",
        max_side=384,
    ),
    Example(
        "chest_xray_cr", "Chest radiograph (CR)", "X-ray", "covid",
        "pydicom", "RG1_UNCR.dcm", f"{PYDICOM_DATA}/RG1_UNCR.dcm", NEMA_WG04,
        "Computed radiography of the chest, MONOCHROME1 (inverted on load); original 1841x1955, "
        "DICOM not copied (7 MB)",
    ),
    Example(
        "ct_small", "CT axial slice (thorax, 128x128)", "CT", None,
        "pydicom", "CT_small.dcm", f"{PYDICOM}/CT_small.dcm",
        "Downsized to 128x128 by pydicom from 'CT1_UNC' of the " + NEMA_WG04,
        "Axial CT slice at thoracic level (vertebra, aorta); uncompressed DICOM with rescale slope/intercept",
        copy_dicom=True,
    ),
    Example(
        "mr_shoulder", "MR of the shoulder (coronal)", "MRI", None,
        "pydicom", "MR2_J2KI.dcm", f"{PYDICOM_DATA}/MR2_J2KI.dcm", NEMA_WG04,
        "Shoulder MR (study 'SHOULDER'), 1024x1024, lossy JPEG 2000 compressed DICOM with window",
        copy_dicom=True,
    ),
    Example(
        "nm_bone_scan", "Whole-body bone scintigraphy (NM)", "nuclear medicine", None,
        "pydicom", "JPEG-LL.dcm", f"{PYDICOM_DATA}/JPEG-LL.dcm",
        "'NM1_JPLL' of the " + NEMA_WG04,
        "Anterior whole-body bone scan, 256x1024, JPEG Lossless (process 14) compressed DICOM",
        copy_dicom=True,
    ),
    Example(
        "us_lymph_node", "Ultrasound with power Doppler (lymph node)", "ultrasound", None,
        "pydicom", "US1_J2KI.dcm", f"{PYDICOM_DATA}/US1_J2KI.dcm",
        "'US1' of the " + NEMA_WG04,
        "Colour ultrasound (power Doppler) labelled 'LYMPH NODE', with burned-in scanner annotations; "
        "lossy JPEG 2000 compressed DICOM (YBR_ICT)",
        copy_dicom=True,
    ),
)


def source_path(example: Example) -> Path:
    if example.package == "skimage":
        import skimage.data

        return Path(skimage.data.__file__).parent / example.name
    from pydicom.data import get_testdata_file  # finds pydicom's own and pydicom-data's files offline

    found = get_testdata_file(example.name, download=False)
    if not found:
        raise FileNotFoundError(f"{example.name} is not installed (pip install pydicom-data)")
    return Path(found)


def build(out_dir: Path = HERE) -> list[dict]:
    entries = []
    for ex in EXAMPLES:
        src = source_path(ex)
        loaded = load_image(src)
        image = loaded.image.copy()
        image.thumbnail((ex.max_side, ex.max_side), Image.Resampling.LANCZOS)  # only ever shrinks
        png = out_dir / f"{ex.stem}.png"
        image.save(png, optimize=True)
        dicom = None
        if ex.copy_dicom:
            if src.stat().st_size > MAX_DICOM_BYTES:
                raise ValueError(f"{src.name} is larger than {MAX_DICOM_BYTES} bytes")
            dicom = f"{ex.stem}.dcm"
            shutil.copyfile(src, out_dir / dicom)
        log.info("%s <- %s (%dx%d)", png.name, src.name, *image.size)
        entries.append({
            "file": png.name,
            "title": ex.title,
            "modality": ex.modality,
            "suggested_preset": ex.preset,
            "source": ex.source,
            "licence": ex.licence,
            "dicom": dicom,
        })
    (out_dir / "examples.json").write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "SOURCES.md").write_text(sources_md(entries), encoding="utf-8")
    return entries


def sources_md(entries: list[dict]) -> str:
    by_file = {f"{ex.stem}.png": ex for ex in EXAMPLES}
    lines = [
        "# Example images: sources and licences",
        "",
        "Generated by `python assets/examples/make_examples.py` from files that ship inside installed",
        "Python packages (no download). Each PNG was decoded with `dpt_core.imageio.load_image` (DICOM:",
        "modality LUT, then the header's window or a robust 0.5-99.5 percentile range; MONOCHROME1",
        f"inverted) and shrunk to at most {MAX_SIDE} px per side (384 px for the two noisy colour images). Where the DICOM original is under",
        f"{MAX_DICOM_BYTES // 1000} kB it is copied unchanged as `.dcm` so the app can show DICOM input.",
        "",
        "These are demonstration inputs only: none of them is from the datasets the presets were",
        "trained on, and the model's output on them has no diagnostic meaning.",
        "",
        "| File | What it shows | Modality | Source package and file | Licence / provenance (as stated by the package) |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        files = f"`{e['file']}`" + (f", `{e['dicom']}`" if e["dicom"] else "")
        cells = [files, by_file[e["file"]].shows, e["modality"], e["source"], e["licence"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [
        "",
        "Package licences: pydicom and pydicom-data are MIT-licensed (pydicom's `test_files/README.txt`:",
        "\"I believe there is no restriction on using any of these files in this manner\"; patient names in",
        "the NEMA samples are the synthetic `CompressedSamples^...`). scikit-image is BSD-3-Clause; the",
        "licence of each of its images is given in the docstring of the matching `skimage.data` function.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build()
