"""Reading images and masks with the checks every stage relies on.

Images are returned as HWC uint8 RGB. EXIF orientation is **not** applied: masks are assumed to
be aligned with the stored pixel grid (what ``numpy.asarray(Image.open(path))`` gives), which is
how the common datasets were annotated.

Two guards run before any pixel is decoded or allocated:

- the size: images, PNG masks and ``.npy`` masks are refused above :data:`MAX_IMAGE_PIXELS`,
  read from the file's header (Pillow's header, the ``.npy`` header), and a ``.npy`` whose header
  claims more data than the file holds is refused before numpy allocates the claimed shape;
- the format: a file is opened only by the decoder its extension names (``.png`` -> PNG,
  ``.jpg``/``.jpeg`` -> JPEG); TIFF, WebP, EPS (Ghostscript) or any other content under such a
  name is refused with a reason naming what it is.
"""

from __future__ import annotations

import ast
import contextlib
import math
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from laplace_head.errors import LaplaceHeadError

# Decompression-bomb guard for images and masks alike, in pixels (height x width). It is checked
# here from the header, in :func:`open_as_claimed` and :func:`_read_npy_mask`; Pillow's
# process-wide ``Image.MAX_IMAGE_PIXELS`` is left alone (its own error, at twice its default,
# coincides with this limit).
MAX_IMAGE_PIXELS = 178_956_970

# The one Pillow format each accepted extension may contain.
FORMAT_OF_EXTENSION = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
_EXTENSION_OF_FORMAT = {"PNG": ".png", "JPEG": ".jpg"}

# Leading bytes of the formats one finds under a wrong name; only used to say what a refused
# file is (it is never handed to that format's decoder).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"icns", "ICNS"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"v/1\x01", "OpenEXR"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x80", "a Python pickle"),
)
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_START = b"\x80"  # the PROTO opcode that starts every pickle of protocol >= 2


class ImageReadError(LaplaceHeadError):
    """An image or mask file cannot be used; the message is the reason."""


def _sniff_format(path: Path) -> str:
    """What the content of ``path`` is, from its first bytes (``"unknown"`` if not known)."""
    with open(path, "rb") as handle:
        head = handle.read(32)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "AVIF" if brand.startswith(b"avi") else "HEIF" if brand.startswith(b"he") else "MP4"
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"1234567" and head[2:3].isspace():
        return "PPM"
    return "unknown"


def _wrong_format_reason(path: Path, claimed: str, what: str) -> str:
    actual = _sniff_format(path)
    if actual == "unknown":
        found = "its content is not a known image format"
    else:
        found = f"it is {actual}"
    if actual in _EXTENSION_OF_FORMAT and what == "image":
        fix = f"rename it to {_EXTENSION_OF_FORMAT[actual]}"
    elif what == "image":
        fix = "convert it to PNG or JPEG"
    else:
        fix = "save the mask as PNG or .npy"
    return f"file named {path.suffix} is not a {claimed} ({found}); {fix}"


def _check_pixels(height: int, width: int, what: str) -> None:
    """Refuse a ``height`` x ``width`` ``what`` ("image"/"mask") over :data:`MAX_IMAGE_PIXELS`."""
    pixels = int(height) * int(width)
    if pixels > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            f"{what} too large (decompression-bomb guard): {height}x{width} = {pixels:,} pixels, "
            f"over the limit of {MAX_IMAGE_PIXELS:,} pixels; downscale it"
        )


@contextlib.contextmanager
def open_as_claimed(path: str | os.PathLike, what: str = "image") -> Iterator[Image.Image]:
    """Open ``path`` with the one Pillow decoder its extension names; check its size first.

    Only the header is read here (``Image.open``); the caller decodes with ``image.load()``
    inside the ``with`` block. ``what`` ("image" or "mask") words the reasons.

    Raises
    ------
    ImageReadError
        If the extension is not ``.png``/``.jpg``/``.jpeg``, the content is another format
        (``... fails to decode: file named .png is not a PNG (it is TIFF); ...``) or the header
        claims more than :data:`MAX_IMAGE_PIXELS` pixels (``... too large ...``).
    """
    path = Path(path)
    failure = "image fails to decode" if what == "image" else f"{what} unreadable"
    claimed = FORMAT_OF_EXTENSION.get(path.suffix.lower())
    if claimed is None:
        raise ImageReadError(f"{failure}: extension {path.suffix!r} is not .png, .jpg or .jpeg")
    with warnings.catch_warnings():
        # The size is checked below against our own limit; Pillow's global stays untouched.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path, formats=[claimed])
        except Image.DecompressionBombError as exc:
            raise ImageReadError(f"{what} too large (decompression-bomb guard): {exc}") from exc
        except UnidentifiedImageError as exc:
            raise ImageReadError(f"{failure}: {_wrong_format_reason(path, claimed, what)}") from exc
        with image:
            width, height = image.size
            _check_pixels(height, width, what)
            yield image


def load_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file into an (H, W, 3) uint8 RGB array.

    Greyscale, palette, 16-bit, RGBA (alpha dropped) and CMYK inputs are converted to RGB.

    Raises
    ------
    ImageReadError
        If the file is missing, empty, truncated, not an image, not the format its extension
        claims or too large.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError("image file is empty (0 bytes)")
        with open_as_claimed(path, "image") as image:
            image.load()
            return _to_rgb(image)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"image too large (decompression-bomb guard): {exc}") from exc
    except OSError as exc:
        raise ImageReadError(f"image fails to decode: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-sample reason
        raise ImageReadError(f"image fails to decode: {type(exc).__name__}: {exc}") from exc


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size and array.max() > 0 else 1.0
        grey = np.clip(array / peak * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGBA").convert("RGB") if "A" in image.mode else image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageReadError(f"unexpected decoded image shape {array.shape}")
    return array


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image, decoding it fully (a truncated file fails here)."""
    array = load_image_rgb(path)
    return int(array.shape[0]), int(array.shape[1])


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask (``.npy`` or ``.png``) and binarise it as ``value > 0``.

    Colour PNG masks count a pixel as foreground when any colour channel is > 0 (alpha is
    ignored).

    ``.npy`` files: the header is read and checked first (no Python objects, 2D, at most
    :data:`MAX_IMAGE_PIXELS` elements, no more data claimed than the file holds), then the data
    with ``allow_pickle=False``. NaN counts as background. No float copy is made.

    Returns
    -------
    numpy.ndarray
        (H, W) bool array.

    Raises
    ------
    ImageReadError
        If the file is unreadable, not 2D, not numeric, too large or (``.png``) not a PNG.
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        if file_size == 0:
            raise ImageReadError("mask file is empty (0 bytes)")
        if path.suffix.lower() == ".npy":
            array = _read_npy_mask(path, file_size)
        else:
            with open_as_claimed(path, "mask") as image:
                image.load()
                array = np.asarray(image)
                if array.ndim == 3:  # colour: any colour channel > 0; alpha is ignored
                    rgb = image.mode in ("RGB", "RGBA")
                    array = array[..., :3].max(-1) if rgb else array[..., 0]
        _check_mask_array(array)
        return _binarise(array)
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure (MemoryError too) is a reason
        raise ImageReadError(f"mask unreadable: {type(exc).__name__}: {exc}") from exc


def _read_npy_mask(path: Path, file_size: int) -> np.ndarray:
    """The array of a ``.npy`` mask, after its header passed every check (nothing allocated
    before that)."""
    with open(path, "rb") as handle:
        start = handle.read(len(_NPY_MAGIC))
        if start.startswith(_ZIP_MAGIC):
            raise ImageReadError("mask unreadable: an .npz archive, not a single .npy array")
        if start != _NPY_MAGIC:
            if start.startswith(_PICKLE_START):
                raise ImageReadError(
                    "mask unreadable (pickled objects are refused): the file is a Python "
                    "pickle, not a .npy array; save masks with numpy.save"
                )
            raise ImageReadError(
                "mask unreadable: not a .npy file (it does not start with the NumPy header); "
                "save masks with numpy.save"
            )
        handle.seek(0)
        shape, dtype = _read_npy_header(handle)
        data_bytes = file_size - handle.tell()
        if dtype.hasobject:
            raise ImageReadError(
                f"mask unreadable (pickled objects are refused): dtype {dtype} holds Python "
                "objects; save a numeric array"
            )
        if len(shape) != 2:
            raise ImageReadError(f"mask is not 2D (shape {shape})")
        _check_pixels(shape[0], shape[1], "mask")
        if math.prod(shape) == 0:
            raise ImageReadError("mask is empty (zero-size array)")
        if not _is_numeric(dtype):
            raise ImageReadError(f"mask has non-numeric dtype {dtype}")
        claimed = math.prod(shape) * dtype.itemsize
        if claimed > data_bytes:
            raise ImageReadError(
                f"mask unreadable: truncated or forged .npy: its header claims shape {shape} "
                f"{dtype} ({claimed:,} bytes) but the file holds {max(data_bytes, 0):,} bytes "
                "of data"
            )
        handle.seek(0)
        return np.lib.format.read_array(handle, allow_pickle=False)


def _read_npy_header(handle) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of an open ``.npy`` file; the handle ends at the data.

    Public numpy only: its readers for format 1.0 and 2.0, and for 3.0 (2.0 with a UTF-8
    header, which numpy has no public reader for) :func:`_read_npy_3_0_header`.
    """
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        elif version == (3, 0):
            shape, dtype = _read_npy_3_0_header(handle)
        else:
            raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
    except (ValueError, EOFError, SyntaxError, TypeError, struct.error, RecursionError) as exc:
        raise ImageReadError(f"mask unreadable: bad .npy header: {exc}") from exc
    return tuple(int(n) for n in shape), np.dtype(dtype)


# Longest .npy header read: numpy's own default (``max_header_size`` of its header readers).
_NPY_MAX_HEADER_BYTES = 10_000
_NPY_HEADER_KEYS = {"descr", "fortran_order", "shape"}


def _read_npy_3_0_header(handle) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of a format-3.0 header: a little-endian uint32 length, then a UTF-8
    Python dict literal with exactly the keys descr, fortran_order and shape."""
    (length,) = struct.unpack("<I", handle.read(4))
    if length > _NPY_MAX_HEADER_BYTES:
        raise ValueError(f"header of {length:,} bytes (limit {_NPY_MAX_HEADER_BYTES:,})")
    text = handle.read(length)
    if len(text) != length:
        raise EOFError("file ends inside the header")
    header = ast.literal_eval(text.decode("utf-8"))
    if not isinstance(header, dict) or set(header) != _NPY_HEADER_KEYS:
        raise ValueError(f"header is not a dict with the keys {sorted(_NPY_HEADER_KEYS)}")
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"shape is not a tuple of sizes: {shape!r}")
    if not isinstance(header["fortran_order"], bool):
        raise ValueError(f"fortran_order is not a bool: {header['fortran_order']!r}")
    return shape, np.lib.format.descr_to_dtype(header["descr"])


def _is_numeric(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.number) or dtype == np.bool_


def _check_mask_array(array: np.ndarray) -> None:
    if array.ndim != 2:
        raise ImageReadError(f"mask is not 2D (shape {array.shape})")
    if array.size == 0:
        raise ImageReadError("mask is empty (zero-size array)")
    if not _is_numeric(array.dtype):
        raise ImageReadError(f"mask has non-numeric dtype {array.dtype}")


def _binarise(array: np.ndarray) -> np.ndarray:
    """``value > 0`` as (H, W) bool, without a float copy (NaN compares False: background)."""
    if np.iscomplexobj(array):
        array = array.real  # a view; the old float64 cast also kept the real part
    with np.errstate(invalid="ignore"):
        return np.greater(array, 0)


def resize_mask_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a boolean (h, w) mask to (height, width) with nearest-neighbour sampling."""
    if mask.shape == (height, width):
        return mask
    rows = np.minimum((np.arange(height) + 0.5) * mask.shape[0] / height, mask.shape[0] - 1)
    cols = np.minimum((np.arange(width) + 0.5) * mask.shape[1] / width, mask.shape[1] - 1)
    return mask[rows.astype(np.int64)[:, None], cols.astype(np.int64)[None, :]]


def resize_image_grid(image_rgb: np.ndarray, size: int) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image resized to the (3, size, size) uint8 grid of the logits.

    The rule the base segmenters' logits follow to the 256 grid: the whole image stretched to
    ``size`` x ``size`` (no aspect-preserving pad), bilinear with pixel centres aligned and
    area-aware when shrinking (Pillow's ``BILINEAR``; SAM's logits use torch's bilinear
    ``antialias=True``, which matches it), so grid cell ``(i, j)`` covers image pixels
    ``[i * H / size, (i + 1) * H / size)`` x ``[j * W / size, (j + 1) * W / size)``.
    Channels first, as the head reads them.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(
            f"image must be (H, W, 3) uint8 RGB; got {image_rgb.dtype} {image_rgb.shape}"
        )
    image = Image.fromarray(np.ascontiguousarray(image_rgb))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
