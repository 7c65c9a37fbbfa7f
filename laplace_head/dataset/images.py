"""Reading images and masks with the checks every stage relies on.

Images are returned as HWC uint8 RGB. EXIF orientation is **not** applied: masks are assumed to
be aligned with the stored pixel grid (what ``numpy.asarray(Image.open(path))`` gives), which is
how the common datasets were annotated.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from laplace_head.errors import LaplaceHeadError

# Decompression-bomb guard: Pillow warns above ~89 Mpx and errors above twice that; we refuse
# anything larger than this many pixels with a clear reason instead.
MAX_IMAGE_PIXELS = 178_956_970
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class ImageReadError(LaplaceHeadError):
    """An image or mask file cannot be used; the message is the reason."""


def load_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file into an (H, W, 3) uint8 RGB array.

    Greyscale, palette, 16-bit, RGBA (alpha dropped) and CMYK inputs are converted to RGB.

    Raises
    ------
    ImageReadError
        If the file is missing, empty, truncated, not an image or too large.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError("image file is empty (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return _to_rgb(image)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
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

    ``.npy`` files are read with ``allow_pickle=False`` (an object array is refused). NaN counts
    as background.

    Returns
    -------
    numpy.ndarray
        (H, W) bool array.

    Raises
    ------
    ImageReadError
        If the file is unreadable, not 2D or not numeric.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError("mask file is empty (0 bytes)")
        if path.suffix.lower() == ".npy":
            try:
                array = np.load(path, allow_pickle=False)
            except ValueError as exc:
                pickled = "pickle" in str(exc) or "Object arrays" in str(exc)
                hint = " (pickled objects are refused)" if pickled else ""
                raise ImageReadError(f"mask unreadable{hint}: {exc}") from exc
            if not isinstance(array, np.ndarray):  # np.load gives an NpzFile for .npz data
                array.close()
                raise ImageReadError("mask unreadable: an .npz archive, not a single .npy array")
        else:
            with Image.open(path) as image:
                image.load()
                array = np.asarray(image)
                if array.ndim == 3:  # colour: any colour channel > 0; alpha is ignored
                    rgb = image.mode in ("RGB", "RGBA")
                    array = array[..., :3].max(-1) if rgb else array[..., 0]
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a per-sample reason
        raise ImageReadError(f"mask unreadable: {type(exc).__name__}: {exc}") from exc
    if array.ndim != 2:
        raise ImageReadError(f"mask is not 2D (shape {array.shape})")
    if array.size == 0:
        raise ImageReadError("mask is empty (zero-size array)")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ImageReadError(f"mask has non-numeric dtype {array.dtype}")
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(array.astype(np.float64), nan=0.0) > 0


def resize_mask_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a boolean (h, w) mask to (height, width) with nearest-neighbour sampling."""
    if mask.shape == (height, width):
        return mask
    rows = np.minimum((np.arange(height) + 0.5) * mask.shape[0] / height, mask.shape[0] - 1)
    cols = np.minimum((np.arange(width) + 0.5) * mask.shape[1] / width, mask.shape[1] - 1)
    return mask[rows.astype(np.int64)[:, None], cols.astype(np.int64)[None, :]]
