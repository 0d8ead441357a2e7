"""Image input: turn an uploaded file (PNG, JPEG, TIFF, BMP, WEBP, GIF or DICOM) into an 8-bit RGB picture.

This is the only module of the project that touches pydicom or PIL's decoders. Everything
else receives a :class:`LoadedImage` whose ``image`` is a plain 8-bit RGB ``PIL.Image``,
or catches :class:`ImageLoadError`, whose message is written for the person in front of
the UI (a clinician): short, no stack trace, no directory names, no patient data.

Rules this module keeps, and why:

* **Patient data never leaves it.** From a DICOM header we read only what is needed to
  render pixels (geometry, transfer syntax, LUT/window attributes) and return only
  ``modality``, ``body_part`` and ``photometric`` in ``LoadedImage.meta``. Messages and
  logs may state the image size, the frame count and the transfer syntax's registered
  name (technical values that identify no one); no other header value is logged or put
  into a message, and pydicom's exception texts (which can quote values) are dropped,
  only their type is logged. (pydicom's own debug mode,
  ``pydicom.config.debug(True)``, logs every element it reads: never enable it in a
  deployment that sees real studies.) File names are not logged either: they are often
  named after the patient. pydicom's own warnings can quote a header value (e.g.
  "Unknown encoding '<SpecificCharacterSet>'"), so its log records are rephrased into a
  fixed sentence at debug level and its Python warnings are ignored (see ``_PydicomRedactor``).
* **Pixel count is checked before any pixel is decoded.** Both PIL and pydicom parse the
  header first, so a 20000x20000 PNG of a few hundred bytes is refused without allocating
  its 400 MB.
* **High bit-depth grayscale is windowed, not clipped.** 12/16-bit CT, MR and X-ray data
  are mapped to 0..255 with the DICOM window when there is one, otherwise with a robust
  (0.5th..99.5th percentile) range, so a few hot pixels do not flatten the contrast.
* **Alpha is composited on black.** Medical images have black backgrounds; a transparent
  region becomes background rather than revealing whatever colour the encoder left there.
"""
from __future__ import annotations

import io
import logging
import os
import re
import struct
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["ImageLoadError", "LoadedImage", "load_image", "count_frames", "frame_pixels"]


class _PydicomRedactor(logging.Filter):
    """Rewrites every record of the ``pydicom`` logger into one fixed sentence at debug level.

    pydicom words its warnings with header values ("Unknown encoding 'X'", invalid value
    'Y' for VR ...); only modality, body part and photometric interpretation may reach a
    log. A header oddity is not something the server's operator can act on, hence debug.
    """

    TEXT = "pydicom reported an irregular DICOM header while decoding (details withheld: they may quote header values)"

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args, record.exc_info, record.exc_text = self.TEXT, (), None, None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        # The logger's level was checked against the original level: check again for debug.
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _redact_pydicom_messages() -> None:
    # Process-wide on purpose: warnings.catch_warnings() around a decode is not thread-safe.
    # Idempotent: the warnings module replaces an identical filter instead of adding one.
    pydicom_log = logging.getLogger("pydicom")
    if not any(isinstance(f, _PydicomRedactor) for f in pydicom_log.filters):
        pydicom_log.addFilter(_PydicomRedactor())
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


_redact_pydicom_messages()

# PIL formats we accept. An allowlist rather than "whatever PIL can open": some PIL
# plugins (EPS) shell out to external programs, others are exotic attack surface.
_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DIB", "WEBP", "GIF")  # JPEG also yields MPO
# How PIL's format names are reported to callers (MPO is a phone camera's JPEG).
_FORMAT_ALIASES = {"MPO": "JPEG", "DIB": "BMP"}
_SUPPORTED_TEXT = "PNG, JPEG, TIFF, BMP, WEBP, GIF or DICOM"

# Robust intensity range for data with more than 8 bits and no window.
_LOW_PCT, _HIGH_PCT = 0.5, 99.5
# Percentiles on more samples than this are computed on a strided subsample (speed only).
_MAX_PERCENTILE_SAMPLES = 2_000_000
# Errors a corrupt or truncated file raises from PIL / zlib / struct parsing.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
# Length cap for the allowlisted DICOM strings we return (they are CS values, <= 16 chars).
_META_MAX_LEN = 64


class ImageLoadError(InputError):
    """The file cannot be shown. ``str(err)`` is safe to display in the UI as is."""


@dataclass(frozen=True)
class LoadedImage:
    """A decoded picture, ready for the model and the UI."""

    image: Image.Image  # mode "RGB", 8 bits per channel
    format: str  # "PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF" or "DICOM"
    n_frames: int  # frames (pages, slices) in the file
    frame: int  # 0-based index of the frame in `image`
    meta: dict[str, str] = field(default_factory=dict)  # DICOM: modality/body_part/photometric only


# --------------------------------------------------------------------------- public API


def load_image(
    source: str | os.PathLike | bytes,
    frame: int | None = None,
    *,
    max_pixels: int = 64_000_000,
) -> LoadedImage:
    """Decode `source` (a path, with any or no extension, or the file's bytes) to 8-bit RGB.

    `frame` picks a page/slice of a multi-frame file; ``None`` means the middle one
    (``n_frames // 2``). `max_pixels` bounds width x height of the frame to decode; PIL's
    ``Image.MAX_IMAGE_PIXELS`` (about 89 Mpx) is a ceiling on it, see :func:`_pixel_limit`.
    Raises :class:`ImageLoadError` for anything that cannot be shown: missing, empty,
    corrupt or unsupported files, images over the limit, DICOM files without pixels or
    compressed with a codec that is not installed, or a frame that does not exist.

    DICOM grayscale: Modality LUT, then the first VOI LUT / window of the header, else the
    robust range; MONOCHROME1 is inverted. (Enhanced multi-frame objects keep their windows
    in functional-group sequences, which are not read: they get the robust range.)
    """
    with _open_source(source) as (fp, name):
        try:
            if _has_dicom_preamble(fp):
                return _load_dicom(fp, frame, max_pixels, force=False)
            pil = _open_pil(fp, max_pixels)
            if pil is not None:
                return _load_pil(pil, frame, max_pixels)
            # Neither a DICOM preamble nor a PIL format: maybe a DICOM file written without
            # the 128-byte preamble (old ACR-NEMA style, some PACS exports).
            return _load_dicom(fp, frame, max_pixels, force=True)
        except ImageLoadError as err:
            raise ImageLoadError(_with_name(name, str(err))) from None


def count_frames(source: str | os.PathLike | bytes) -> int:
    """Number of frames (pages, slices) in `source`, read from the header where possible.

    Meant for a frame picker; raises :class:`ImageLoadError` like :func:`load_image`.
    """
    with _open_source(source) as (fp, name):
        try:
            if _has_dicom_preamble(fp):
                return _dicom_frames(_read_dicom_header(fp, force=False))
            pil = _open_pil(fp, max_pixels=None)
            if pil is not None:
                # TIFF/GIF count pages by walking their directories, not by decoding pixels.
                return max(1, int(getattr(pil, "n_frames", 1)))
            return _dicom_frames(_read_dicom_header(fp, force=True))
        except ImageLoadError as err:
            raise ImageLoadError(_with_name(name, str(err))) from None


def frame_pixels(source: str | os.PathLike | bytes) -> int:
    """Width x height of one frame of `source`, from the header alone (what a decode will cost).

    Lets a caller budget a batch of uploads before decoding any of them; raises
    :class:`ImageLoadError` like :func:`load_image`.
    """
    with _open_source(source) as (fp, name):
        try:
            if _has_dicom_preamble(fp):
                return _dicom_pixels(_read_dicom_header(fp, force=False))
            pil = _open_pil(fp, max_pixels=None)
            if pil is not None:
                return int(pil.width) * int(pil.height)
            return _dicom_pixels(_read_dicom_header(fp, force=True))
        except ImageLoadError as err:
            raise ImageLoadError(_with_name(name, str(err))) from None


def _dicom_pixels(header) -> int:
    try:
        return int(header.get("Rows", 0) or 0) * int(header.get("Columns", 0) or 0)
    except (TypeError, ValueError):
        raise ImageLoadError("this DICOM file is damaged or incomplete.") from None


# --------------------------------------------------------------------------- source handling


@contextmanager
def _open_source(source: str | os.PathLike | bytes) -> Iterator[tuple[IO[bytes], str | None]]:
    """Yield a seekable binary stream for `source` and the base name to quote in messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError("Could not read the image: the file is empty.")
        yield io.BytesIO(bytes(source)), None
        return
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or bytes, not {type(source).__name__}")
    path = os.fspath(source)
    name = os.path.basename(path) or None
    if not os.path.exists(path):
        raise ImageLoadError(_with_name(name, "the file could not be found."))
    if not os.path.isfile(path):
        raise ImageLoadError(_with_name(name, "this is not a file."))
    try:
        fp = open(path, "rb")
    except OSError:
        raise ImageLoadError(_with_name(name, "the file could not be opened.")) from None
    # pydicom quotes `fp.name` in some warnings it logs; the name may be the patient's, so hide it.
    fp.raw.name = "<upload>"
    with fp:
        if os.fstat(fp.fileno()).st_size == 0:
            raise ImageLoadError(_with_name(name, "the file is empty."))
        yield fp, name


def _with_name(name: str | None, reason: str) -> str:
    # The base name helps the user tell uploads apart; directories (server temp paths) never appear.
    return f"Could not read '{name}': {reason}" if name else f"Could not read the image: {reason}"


def _has_dicom_preamble(fp: IO[bytes]) -> bool:
    fp.seek(128)
    magic = fp.read(4)
    fp.seek(0)
    return magic == b"DICM"


def _check_frame(frame: int | None, n_frames: int) -> int:
    if frame is None:
        return n_frames // 2  # the middle slice is the most representative default
    if not 0 <= frame < n_frames:
        last = f", numbered 0 to {n_frames - 1}" if n_frames > 1 else ""
        raise ImageLoadError(f"frame {frame} does not exist; this image has {n_frames} frame(s){last}.")
    return frame


def _too_large(width: int, height: int, max_pixels: int) -> ImageLoadError:
    return ImageLoadError(
        f"the image is {width}x{height} pixels; the limit is {max_pixels:,} pixels. "
        "Please upload a smaller image."
    )


# --------------------------------------------------------------------------- PIL path


def _pixel_limit(max_pixels: int) -> int:
    # PIL warns (DecompressionBombWarning) above Image.MAX_IMAGE_PIXELS and raises above twice
    # that. We make its warning threshold a hard ceiling so a "bomb" is always our clear error.
    # (Catching the warning with warnings.catch_warnings() would not be thread-safe: the app
    # serves requests from several threads.)
    pil_limit = Image.MAX_IMAGE_PIXELS
    return max_pixels if pil_limit is None else min(max_pixels, int(pil_limit))


def _open_pil(fp: IO[bytes], max_pixels: int | None) -> Image.Image | None:
    """Open lazily with PIL (header only); None if it is not one of our PIL formats."""
    fp.seek(0)
    try:
        im = Image.open(fp, formats=_PIL_FORMATS)
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError:
        size = _probe_size(fp)
        limit = _pixel_limit(max_pixels or 64_000_000)
        if size is not None:
            raise _too_large(size[0], size[1], limit) from None
        raise ImageLoadError(f"the image is too large; the limit is {limit:,} pixels.") from None
    except _DECODE_ERRORS:
        raise ImageLoadError("the image file is damaged or incomplete.") from None
    if max_pixels is not None:
        limit = _pixel_limit(max_pixels)
        if im.width * im.height > limit:
            raise _too_large(im.width, im.height, limit)
    return im


def _probe_size(fp: IO[bytes]) -> tuple[int, int] | None:
    """Width and height from the header alone, bypassing PIL's bomb check (for the message)."""
    fp.seek(0)
    prefix = fp.read(16)
    for fmt in _PIL_FORMATS:
        try:
            factory, accept = Image.OPEN[fmt]
            if accept and not accept(prefix):
                continue
            fp.seek(0)
            return factory(fp, "").size
        except Exception:  # noqa: BLE001 - best effort, only used to word a message
            continue
    return None


def _load_pil(im: Image.Image, frame: int | None, max_pixels: int) -> LoadedImage:
    fmt = _FORMAT_ALIASES.get(im.format or "", im.format or "image")
    n_frames = max(1, int(getattr(im, "n_frames", 1)))
    index = _check_frame(frame, n_frames)
    try:
        if index:
            im.seek(index)
            # Pages of a TIFF can differ in size: check the one we are about to decode too.
            if im.width * im.height > _pixel_limit(max_pixels):
                raise _too_large(im.width, im.height, _pixel_limit(max_pixels))
        im.load()
        # Phones store portrait photos sideways plus an EXIF orientation tag.
        im = ImageOps.exif_transpose(im)
        rgb = _pil_to_rgb(im)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError:
        raise _too_large(im.width, im.height, _pixel_limit(max_pixels)) from None
    except _DECODE_ERRORS:
        raise ImageLoadError("the image file is damaged or incomplete.") from None
    logger.debug("decoded %s frame %d/%d as %dx%d RGB", fmt, index + 1, n_frames, *rgb.size)
    return LoadedImage(image=rgb, format=fmt, n_frames=n_frames, frame=index, meta={})


def _pil_to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode in ("1", "L", "CMYK", "YCbCr", "LAB", "HSV"):
        return im.convert("RGB")
    if mode.startswith("I") or mode == "F":
        # 16/32-bit integer or float grayscale: stretch the robust range, don't clip at 255.
        return _gray_to_rgb(_robust_to_uint8(np.asarray(im)))
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        return im if im.mode == "RGB" else _composite_on_black(im)
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        return _composite_on_black(im.convert("RGBA"))
    try:
        return im.convert("RGB")
    except ValueError:
        raise ImageLoadError(f"this {im.format or ''} pixel layout ({mode}) is not supported.") from None


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("RGB")


# --------------------------------------------------------------------------- DICOM path


def _read_dicom_header(fp: IO[bytes], *, force: bool):
    """Parse everything except Pixel Data; pydicom's errors become ImageLoadError."""
    import pydicom  # local: importing pydicom costs time the PNG-only paths don't need

    _redact_pydicom_messages()  # again before each DICOM: a warnings context may have reset the filters

    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, force=force, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types; none may reach the UI
        # Log the exception type only: pydicom's messages can quote header values.
        logger.debug("DICOM header unreadable (%s)", type(exc).__name__)
        if force:
            raise _unsupported() from None
        raise ImageLoadError("this DICOM file is damaged or incomplete.") from None
    if force and not _looks_like_dicom(ds):
        raise _unsupported()
    return ds


def _looks_like_dicom(ds) -> bool:
    # A forced read parses any bytes into *some* elements; demand ones every image file has.
    keys = ("SOPClassUID", "Modality", "Rows", "Columns", "PhotometricInterpretation", "StudyInstanceUID")
    return any(k in ds for k in keys) or "TransferSyntaxUID" in getattr(ds, "file_meta", {})


def _unsupported() -> ImageLoadError:
    return ImageLoadError(f"this is not an image file the app can read ({_SUPPORTED_TEXT}).")


def _dicom_frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _load_dicom(fp: IO[bytes], frame: int | None, max_pixels: int, *, force: bool) -> LoadedImage:
    import pydicom
    from pydicom.pixels import apply_color_lut, get_decoder

    header = _read_dicom_header(fp, force=force)
    if "Rows" not in header or "Columns" not in header:
        # No image geometry: a structured report, RT plan, KOS, ... or a file cut before Pixel Data.
        raise ImageLoadError("this DICOM file holds no image.")
    try:
        rows, cols = int(header.Rows), int(header.Columns)
    except Exception:  # noqa: BLE001 - a malformed value; pydicom may raise on conversion
        raise ImageLoadError("this DICOM file is damaged or incomplete.") from None
    # Same ceiling as for PIL files: pydicom decodes JPEG / JPEG 2000 frames through Pillow.
    limit = _pixel_limit(max_pixels)
    if rows * cols > limit:
        raise _too_large(cols, rows, limit)
    n_frames = _dicom_frames(header)
    index = _check_frame(frame, n_frames)

    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, force=force)
    except Exception as exc:  # noqa: BLE001
        logger.debug("DICOM unreadable (%s)", type(exc).__name__)
        raise ImageLoadError("this DICOM file is damaged or incomplete.") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageLoadError("this DICOM file holds no image.")

    tsyntax = _transfer_syntax(ds)
    try:
        available = get_decoder(tsyntax).is_available
    except (NotImplementedError, ValueError):  # no decoder exists at all / not a transfer syntax
        available = False
    if not available:
        raise ImageLoadError(
            f"this DICOM file is compressed as {_tsyntax_name(tsyntax)}, and the decoder "
            "for it is not installed on this server."
        )

    try:
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2" if spp == 1 else "RGB")).strip().upper()
        # Decode only the requested frame; as_rgb converts YBR_FULL(_422) to RGB.
        ds.pixel_array_options(index=index, as_rgb=True)
        arr = ds.pixel_array
        if photometric == "PALETTE COLOR":
            rgb = _rgb_from_array(_palette_to_uint8(apply_color_lut(arr, ds)))
        elif spp == 1:
            rgb = _gray_to_rgb(_dicom_gray_to_uint8(arr, ds, invert=photometric == "MONOCHROME1"))
        else:
            rgb = _rgb_from_array(_color_to_uint8(arr, ds))
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoder/LUT errors; type only, see _read_dicom_header
        logger.debug("DICOM pixel data undecodable (%s)", type(exc).__name__)
        raise ImageLoadError("the image data in this DICOM file is damaged or incomplete.") from None

    meta = _dicom_meta(ds)
    logger.debug(
        "decoded DICOM frame %d/%d as %dx%d RGB (%s)", index + 1, n_frames, *rgb.size, _tsyntax_name(tsyntax)
    )
    return LoadedImage(image=rgb, format="DICOM", n_frames=n_frames, frame=index, meta=meta)


def _transfer_syntax(ds):
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    tsyntax = getattr(ds, "file_meta", None) and ds.file_meta.get("TransferSyntaxUID")
    if tsyntax:
        return UID(str(tsyntax))
    # Files without File Meta (read with force): the parser already found the encoding.
    # Encapsulated (compressed) Pixel Data can't be identified without the UID.
    elem = ds["PixelData"] if "PixelData" in ds else None
    if elem is not None and elem.is_undefined_length:
        raise ImageLoadError("this DICOM file is compressed but does not say how (no transfer syntax).")
    implicit, little = ds.original_encoding
    uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.file_meta.TransferSyntaxUID = uid
    return uid


def _tsyntax_name(uid) -> str:
    # A registered UID's name ("JPEG 2000 Image Compression"); UIDs are digits and dots only.
    try:
        if uid.is_transfer_syntax and uid.name != str(uid):
            return f"'{uid.name}'"
    except ValueError:  # private UIDs have no registered type
        pass
    return f"transfer syntax {uid}" if re.fullmatch(r"[0-9.]{1,64}", str(uid)) else "an unknown transfer syntax"


def _dicom_meta(ds) -> dict[str, str]:
    # The allowlist. Do not add fields here without a privacy review: this dict reaches the UI.
    meta: dict[str, str] = {}
    for key, keyword in (("modality", "Modality"), ("body_part", "BodyPartExamined"),
                         ("photometric", "PhotometricInterpretation")):
        value = ds.get(keyword)
        if value is not None and str(value).strip():
            meta[key] = str(value).strip()[:_META_MAX_LEN]
    return meta


def _dicom_gray_to_uint8(arr: np.ndarray, ds, *, invert: bool) -> np.ndarray:
    """Modality LUT (slope/intercept), then the header's VOI LUT/window or a robust range."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds)
    out = None
    if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        try:
            windowed = apply_voi_lut(values, ds, index=0)
            if ds.get("VOILUTSequence"):
                lo, hi = float(np.min(windowed)), float(np.max(windowed))
            else:
                # Ask pydicom for the window's output range by windowing two extreme values.
                with np.errstate(over="ignore"):
                    lo, hi = (float(v) for v in apply_voi_lut(np.array([-1e30, 1e30]), ds, index=0))
            if hi > lo:
                out = _linear_to_uint8(np.asarray(windowed, dtype=np.float64), lo, hi)
        except Exception as exc:  # noqa: BLE001 - an invalid window falls back, it isn't fatal
            logger.debug("DICOM window unusable (%s); using the robust range", type(exc).__name__)
    if out is None:
        out = _robust_to_uint8(values)
    # MONOCHROME1: the lowest value is white (CR/DX radiographs).
    return 255 - out if invert else out


def _color_to_uint8(arr: np.ndarray, ds) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError("unexpected colour layout")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr
    # Keep colour balance: scale by the nominal bit depth, not per-channel ranges.
    bits = int(ds.get("BitsStored", 8 * arr.dtype.itemsize) or 8)
    return _linear_to_uint8(arr.astype(np.float64), 0.0, float(2**bits - 1))


def _palette_to_uint8(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb[..., :3]
    if rgb.dtype == np.uint8:
        return rgb
    # 16-bit LUT entries; some writers declare 16 bits but store 8-bit values.
    top = 255.0 if rgb.max(initial=0) <= 255 else 65535.0
    return _linear_to_uint8(rgb.astype(np.float64), 0.0, top)


# --------------------------------------------------------------------------- intensity helpers


def _linear_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _robust_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map the 0.5th..99.5th percentile range to 0..255 (min..max if that range is empty)."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    flat = values.ravel()
    sample = flat[:: max(1, flat.size // _MAX_PERCENTILE_SAMPLES)]
    lo, hi = (float(v) for v in np.percentile(sample, [_LOW_PCT, _HIGH_PCT]))
    if hi <= lo:  # mostly constant image with a few outliers: use the full range instead
        lo, hi = float(flat.min(initial=0.0)), float(flat.max(initial=0.0))
    if hi <= lo:  # truly constant: nothing to show
        return np.zeros(values.shape, dtype=np.uint8)
    return _linear_to_uint8(values, lo, hi)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    if gray.ndim == 3:  # (H, W, 1) from some decoders
        gray = gray[..., 0]
    return Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8)).convert("RGB")


def _rgb_from_array(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))  # (H, W, 3) uint8 -> "RGB"
