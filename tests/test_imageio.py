"""dpt_core.imageio: every input path, the safety guards, and the shipped examples. Fast and offline."""
from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    HTJ2K,
    MPEG2MPML,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from dpt_core.imageio import ImageLoadError, LoadedImage, count_frames, load_image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "assets" / "examples"
PRESETS = ROOT / "assets" / "presets"
META_KEYS = {"modality", "body_part", "photometric"}


# --------------------------------------------------------------------------- helpers


def _check_rgb(loaded: LoadedImage) -> np.ndarray:
    assert isinstance(loaded, LoadedImage)
    assert loaded.image.mode == "RGB"
    arr = np.asarray(loaded.image)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    assert 0 <= loaded.frame < loaded.n_frames
    return arr


def _load_error(source, tmp_path: Path | None = None, **kwargs) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(source, **kwargs)
    message = str(info.value)
    # Safe for the UI: one line, no traceback, no directories.
    assert "\n" not in message and "Traceback" not in message
    if tmp_path is not None:
        assert str(tmp_path) not in message
    return message


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height (1-bit gray) with a few bytes of IDAT: tiny on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _dicom(
    arr: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    modality: str = "CT",
    **elements,
) -> Dataset:
    """A minimal image dataset (Explicit VR Little Endian) with `arr` as Pixel Data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    if arr is not None:
        bits = 8 if arr.dtype == np.uint8 else 16
        ds.set_pixel_data(arr, photometric, bits, generate_instance_uid=False)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _save(ds: Dataset, path: Path, *, preamble: bool = True) -> Path:
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:  # no preamble, no File Meta: the old ACR-NEMA-like layout some exports still produce
        del ds.file_meta
        ds.preamble = None
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    return path


# --------------------------------------------------------------------------- PIL formats


def test_png_8bit_gray(tmp_path):
    ramp = np.tile(np.arange(256, dtype=np.uint8), (16, 1))
    Image.fromarray(ramp).save(tmp_path / "gray.png")
    loaded = load_image(tmp_path / "gray.png")
    arr = _check_rgb(loaded)
    assert loaded.format == "PNG" and loaded.n_frames == 1 and loaded.frame == 0 and loaded.meta == {}
    assert np.array_equal(arr[..., 0], ramp) and np.array_equal(arr[..., 1], ramp)


def test_png_16bit_gray_is_rescaled_robustly_not_clipped(tmp_path):
    ramp = np.linspace(0, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)
    ramp[0, :5] = 65535  # a few hot pixels must not squash the contrast
    Image.fromarray(ramp).save(tmp_path / "gray16.png")
    with Image.open(tmp_path / "gray16.png") as written:
        assert written.mode.startswith("I")
    arr = _check_rgb(load_image(tmp_path / "gray16.png"))[..., 0]
    assert arr.min() == 0 and arr.max() == 255
    assert 100 <= np.median(arr) <= 155  # clipping at 255 would make it 255, min/max scaling ~8
    assert (arr[0, :5] == 255).all()


def test_png_rgba_is_composited_on_black(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red everywhere ...
    rgba[0, 0, 3] = 0  # ... transparent here
    rgba[0, 1, 3] = 255  # opaque here
    rgba[0, 2, 3] = 128  # half here
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    arr = _check_rgb(load_image(tmp_path / "alpha.png"))
    assert tuple(arr[0, 0]) == (0, 0, 0)
    assert tuple(arr[0, 1]) == (200, 0, 0)
    assert 95 <= arr[0, 2, 0] <= 105


def test_palette_png_with_transparency_and_la(tmp_path):
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.info["transparency"] = 0
    pal.putpixel((0, 0), 0)
    pal.save(tmp_path / "pal.png", transparency=0)
    arr = _check_rgb(load_image(tmp_path / "pal.png"))
    assert tuple(arr[1, 1]) == (10, 200, 30) and tuple(arr[0, 0]) == (0, 0, 0)

    Image.new("LA", (3, 3), (180, 255)).save(tmp_path / "la.png")
    assert tuple(_check_rgb(load_image(tmp_path / "la.png"))[1, 1]) == (180, 180, 180)


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    arr = _check_rgb(load_image(tmp_path / "cmyk.jpg"))
    assert arr[4, 4, 0] > 200 and arr[4, 4, 1] < 60  # red


def test_tiff_16bit(tmp_path):
    data = np.linspace(1000, 3000, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "gray16.tif")
    loaded = load_image(tmp_path / "gray16.tif")
    arr = _check_rgb(loaded)[..., 0]
    assert loaded.format == "TIFF"
    assert arr.min() == 0 and arr.max() == 255 and arr.std() > 50


def test_multipage_tiff_frame_choice(tmp_path):
    pages = [Image.new("L", (8, 8), v) for v in (10, 100, 200)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    path = tmp_path / "pages.tif"
    assert count_frames(path) == 3

    middle = load_image(path)
    assert (middle.n_frames, middle.frame) == (3, 1)
    assert _check_rgb(middle)[0, 0, 0] == 100

    last = load_image(path, frame=2)
    assert last.frame == 2 and _check_rgb(last)[0, 0, 0] == 200
    assert _check_rgb(load_image(path, frame=0))[0, 0, 0] == 10

    message = _load_error(path, tmp_path, frame=3)
    assert "frame 3 does not exist" in message and "3 frame" in message


def test_gif_frames(tmp_path):
    frames = [Image.new("P", (6, 6), i) for i in range(4)]
    for f in frames:
        f.putpalette([v for i in range(256) for v in (i * 40 % 256, 0, 0)])
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    loaded = load_image(tmp_path / "anim.gif")
    assert loaded.format == "GIF" and loaded.n_frames == 4 and loaded.frame == 2
    assert _check_rgb(loaded)[0, 0, 0] == 80


def test_jpeg_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    loaded = load_image(tmp_path / "phone.jpg")
    arr = _check_rgb(loaded)
    assert loaded.format == "JPEG" and loaded.image.size == (20, 40)
    assert arr[5, 10, 0] > 200 and arr[5, 10, 2] < 60  # the left half is now on top
    assert arr[35, 10, 2] > 200 and arr[35, 10, 0] < 60


def test_bmp_and_webp(tmp_path):
    Image.new("RGB", (5, 5), (1, 2, 3)).save(tmp_path / "a.bmp")
    Image.new("RGB", (5, 5), (50, 100, 150)).save(tmp_path / "a.webp", lossless=True)
    assert load_image(tmp_path / "a.bmp").format == "BMP"
    assert tuple(_check_rgb(load_image(tmp_path / "a.bmp"))[2, 2]) == (1, 2, 3)
    assert tuple(_check_rgb(load_image(tmp_path / "a.webp"))[2, 2]) == (50, 100, 150)


# --------------------------------------------------------------------------- DICOM


def test_dicom_ct_small_from_pydicom():
    loaded = load_image(get_testdata_file("CT_small.dcm"))
    arr = _check_rgb(loaded)
    assert loaded.format == "DICOM" and loaded.n_frames == 1
    assert loaded.meta == {"modality": "CT", "photometric": "MONOCHROME2"}
    assert arr.std() > 20 and arr.min() == 0 and arr.max() == 255


def test_dicom_modality_lut_then_window(tmp_path):
    # Stored values = HU + 1024; soft-tissue window (40/400) must be applied to HU, not raw values.
    hu = np.array([[-1000, 0, 40, 1000]], dtype=np.int32)
    raw = (hu + 1024).astype(np.uint16)
    ds = _dicom(raw, RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=40, WindowWidth=400)
    out = _check_rgb(load_image(_save(ds, tmp_path / "ct.dcm")))[0, :, 0]
    expected = np.clip(((hu - 39.5) / 399 + 0.5) * 255, 0, 255)
    assert np.abs(out.astype(float) - expected).max() <= 1.0
    assert out[0] == 0 and out[3] == 255 and 100 <= out[1] <= 105


def test_dicom_without_window_uses_robust_range(tmp_path):
    data = np.linspace(0, 3000, 32 * 32).reshape(32, 32).astype(np.uint16)
    data[0, 0] = 65535
    out = _check_rgb(load_image(_save(_dicom(data), tmp_path / "nowin.dcm")))[..., 0]
    assert out.min() == 0 and out.max() == 255 and 100 <= np.median(out) <= 155


def test_dicom_monochrome1_is_inverted(tmp_path):
    data = np.array([[0, 500], [1000, 1000]], dtype=np.uint16)
    ds = _dicom(data, photometric="MONOCHROME1", modality="CR")
    loaded = load_image(_save(ds, tmp_path / "cr.dcm"))
    out = _check_rgb(loaded)[..., 0]
    assert loaded.meta["photometric"] == "MONOCHROME1"
    assert out[0, 0] == 255 and out[1, 1] == 0  # lowest value shows white


def test_dicom_multiframe_middle_and_explicit_frame(tmp_path):
    frames = np.stack([np.full((4, 4), k * 100, dtype=np.uint16) for k in range(5)])
    ds = _dicom(frames, WindowCenter=250, WindowWidth=500)
    path = _save(ds, tmp_path / "multi.dcm")
    assert count_frames(path) == 5

    middle = load_image(path)
    assert (middle.n_frames, middle.frame) == (5, 2)
    last = load_image(path, frame=4)
    first = load_image(path, frame=0)
    values = [_check_rgb(x)[0, 0, 0] for x in (first, middle, last)]
    assert values[0] < values[1] < values[2]
    assert 95 <= values[1] <= 110

    assert "frame 5 does not exist" in _load_error(path, tmp_path, frame=5)


def test_dicom_without_pixel_data(tmp_path):
    path = _save(_dicom(None), tmp_path / "nopix.dcm")
    assert "holds no image" in _load_error(path, tmp_path)
    assert "holds no image" in _load_error(get_testdata_file("rtplan.dcm"))


PHI = {
    "PatientName": "Doe^Jane^Quincy",
    "PatientID": "PHI-ID-987654",
    "PatientBirthDate": "19610203",
    "InstitutionName": "Saint Secret Hospital",
    "ReferringPhysicianName": "Who^Doctor",
    "AccessionNumber": "ACC55501",
    "StudyDescription": "SECRETSTUDY Thoraxscan",
}


def _phi_dataset(arr: np.ndarray | None) -> Dataset:
    return _dicom(arr, BodyPartExamined="CHEST", **PHI)


def _assert_no_phi(text: str) -> None:
    for value in PHI.values():
        for token in value.replace("^", " ").split():
            assert token not in text, f"PHI token {token!r} leaked"


def test_dicom_phi_never_reaches_meta_logs_or_messages(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="dpt_core.imageio")
    data = np.arange(64, dtype=np.uint16).reshape(8, 8)
    image_path = _save(_phi_dataset(data), tmp_path / "scan_of_mrs_x.dcm")
    empty_path = _save(_phi_dataset(None), tmp_path / "nopix.dcm")
    tiny_path = _save(_phi_dataset(data), tmp_path / "tiny.dcm")

    loaded = load_image(image_path)
    assert set(loaded.meta) <= META_KEYS
    assert loaded.meta == {"modality": "CT", "body_part": "CHEST", "photometric": "MONOCHROME2"}
    _assert_no_phi(repr(loaded.meta) + repr(loaded))
    assert count_frames(image_path) == 1
    load_image(image_path.read_bytes())

    messages = [
        _load_error(empty_path, tmp_path),
        _load_error(tiny_path, tmp_path, max_pixels=10),
        _load_error(image_path, tmp_path, frame=7),
    ]
    for message in messages:
        _assert_no_phi(message)

    assert any(r.name == "dpt_core.imageio" for r in caplog.records), "the module should log at DEBUG"
    for record in caplog.records:
        _assert_no_phi(record.getMessage())
    _assert_no_phi(caplog.text)
    assert "scan_of_mrs_x" not in caplog.text  # file names may name the patient: not logged either


@pytest.mark.parametrize(
    "name, colour",
    [
        ("MR_small_RLE.dcm", False),  # RLE Lossless (pydicom's own decoder)
        ("SC_rgb_jpeg_dcmtk.dcm", True),  # JPEG Baseline, YBR_FULL -> RGB
        ("JPGExtended.dcm", False),  # JPEG Extended 12-bit (pylibjpeg-libjpeg)
    ],
)
def test_compressed_dicom_decodes(name, colour):
    loaded = load_image(get_testdata_file(name))
    arr = _check_rgb(loaded)
    assert loaded.format == "DICOM" and arr.std() > 10
    channels_differ = not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]))
    assert channels_differ == colour


def test_rle_matches_uncompressed():
    rle = np.asarray(load_image(get_testdata_file("MR_small_RLE.dcm")).image)
    native = np.asarray(load_image(get_testdata_file("MR_small.dcm")).image)
    assert np.array_equal(rle, native)


def test_ybr_jpeg_colours_are_rgb():
    # SC_rgb_* is a test pattern whose top band is pure red.
    arr = _check_rgb(load_image(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")))
    r, g, b = (int(v) for v in arr[2, 50])
    assert r > 200 and g < 50 and b < 50


def _encapsulated(tmp_path: Path, tsyntax: UID, name: str) -> Path:
    ds = _dicom(None, **PHI)
    ds.file_meta.TransferSyntaxUID = tsyntax
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    return _save(ds, tmp_path / name)


def test_dicom_with_missing_decoder_names_the_transfer_syntax(tmp_path):
    message = _load_error(_encapsulated(tmp_path, MPEG2MPML, "mpeg.dcm"), tmp_path)
    assert "MPEG2 Main Profile / Main Level" in message and "not installed" in message
    _assert_no_phi(message)


def test_dicom_htj2k_without_openjpeg(tmp_path):
    from pydicom.pixels import get_decoder

    if get_decoder(HTJ2K).is_available:
        pytest.skip("an HTJ2K decoder is installed here")
    message = _load_error(_encapsulated(tmp_path, HTJ2K, "htj2k.dcm"), tmp_path)
    assert "High-Throughput JPEG 2000" in message and "decoder" in message


def test_dicom_truncated_pixel_data():
    # pydicom's MR_small with Pixel Data cut short.
    assert "damaged or incomplete" in _load_error(get_testdata_file("MR_truncated.dcm"))


def test_dicom_without_preamble_is_found_by_content(tmp_path):
    data = np.arange(16, dtype=np.uint16).reshape(4, 4) * 100
    path = _save(_dicom(data), tmp_path / "scan", preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    loaded = load_image(path)
    assert loaded.format == "DICOM" and _check_rgb(loaded)[..., 0].std() > 50
    assert count_frames(path) == 1


# --------------------------------------------------------------------------- bad input


def test_text_file_renamed_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("Patient seemed fine. This is not an image at all.\n" * 20)
    message = _load_error(path, tmp_path)
    assert "notes.png" in message and "not an image file" in message
    with pytest.raises(ImageLoadError):
        count_frames(path)


def test_empty_file_and_empty_bytes(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty" in _load_error(tmp_path / "empty.png", tmp_path)
    assert "empty" in _load_error(b"")


def test_missing_file_names_only_the_base_name(tmp_path):
    message = _load_error(tmp_path / "sub" / "missing.png", tmp_path)
    assert "'missing.png'" in message and "not be found" in message


def test_truncated_png(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert "damaged or incomplete" in _load_error(tmp_path / "cut.png", tmp_path)


def test_unsupported_format(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "pic.pcx")  # PIL reads PCX; the app does not
    assert "not an image file the app can read" in _load_error(tmp_path / "pic.pcx", tmp_path)


# --------------------------------------------------------------------------- decompression bombs


@pytest.fixture
def no_decoding(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_png_bomb_is_rejected_before_decoding(tmp_path, no_decoding):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(20000, 20000))
    assert path.stat().st_size < 1000
    message = _load_error(path, tmp_path)
    assert "20000x20000" in message and "limit" in message
    assert "20000x20000" in _load_error(path.read_bytes())


def test_own_pixel_limit(tmp_path, no_decoding):
    Image.new("L", (100, 80)).save(tmp_path / "small.png")
    message = _load_error(tmp_path / "small.png", tmp_path, max_pixels=5000)
    assert "100x80" in message and "5,000" in message


def test_pil_bomb_warning_becomes_error(tmp_path, no_decoding):
    # Above PIL's warning threshold (~89 Mpx), below its error threshold, and below max_pixels.
    (tmp_path / "big.png").write_bytes(_png_header_only(10000, 10000))
    with pytest.warns(Image.DecompressionBombWarning):
        message = _load_error(tmp_path / "big.png", tmp_path, max_pixels=10**9)
    assert "10000x10000" in message


def test_dicom_bomb_is_rejected_before_decoding(tmp_path, monkeypatch):
    ds = _dicom(np.zeros((2, 2), dtype=np.uint16))
    ds.Rows = ds.Columns = 20000
    path = _save(ds, tmp_path / "bomb.dcm")
    monkeypatch.setattr(Dataset, "convert_pixel_data", lambda *a, **k: pytest.fail("decoded"))
    assert "20000x20000" in _load_error(path, tmp_path)


# --------------------------------------------------------------------------- sources


def test_raw_bytes_input():
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (9, 8, 7)).save(buf, "PNG")
    loaded = load_image(buf.getvalue())
    assert loaded.format == "PNG" and tuple(_check_rgb(loaded)[1, 2]) == (9, 8, 7)

    dicom_bytes = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert load_image(dicom_bytes).format == "DICOM"
    assert count_frames(dicom_bytes) == 1


def test_files_without_extension(tmp_path):
    Image.new("RGB", (3, 3), (5, 6, 7)).save(tmp_path / "png_noext", "PNG")
    assert load_image(tmp_path / "png_noext").format == "PNG"
    (tmp_path / "dicom_noext").write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    loaded = load_image(str(tmp_path / "dicom_noext"))
    assert loaded.format == "DICOM" and loaded.meta["modality"] == "MR"
    assert count_frames(tmp_path / "png_noext") == 1


def test_result_is_frozen(tmp_path):
    Image.new("L", (2, 2)).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    with pytest.raises(AttributeError):
        loaded.frame = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- shipped examples


def _examples() -> list[dict]:
    return json.loads((EXAMPLES / "examples.json").read_text(encoding="utf-8"))


def test_examples_json_entries_exist_and_load():
    entries = _examples()
    assert 5 <= len(entries) <= 7
    presets = {p.stem for p in PRESETS.glob("*.json")}
    for entry in entries:
        assert {"file", "title", "modality", "suggested_preset", "source", "licence"} <= set(entry)
        assert entry["file"].endswith(".png") and entry["title"] and entry["licence"] and entry["source"]
        assert entry["suggested_preset"] is None or entry["suggested_preset"] in presets
        loaded = load_image(EXAMPLES / entry["file"])
        assert loaded.format == "PNG" and max(loaded.image.size) <= 512
        _check_rgb(loaded)
        if entry.get("dicom"):
            dicom = EXAMPLES / entry["dicom"]
            assert dicom.stat().st_size < 200_000
            shown = load_image(dicom)
            assert shown.format == "DICOM" and set(shown.meta) <= META_KEYS


def test_examples_are_small_and_documented():
    files = [p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".dcm")]
    assert sum(p.stat().st_size for p in files) < 1_500_000
    sources = (EXAMPLES / "SOURCES.md").read_text(encoding="utf-8")
    listed = {e["file"] for e in _examples()} | {e["dicom"] for e in _examples() if e.get("dicom")}
    assert listed == {p.name for p in files}
    for name in listed:
        assert name in sources
