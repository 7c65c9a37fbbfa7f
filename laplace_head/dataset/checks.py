"""Per-sample integrity checks, each failure with a reason string."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from laplace_head.dataset.images import (
    ImageReadError,
    load_image_rgb,
    load_mask,
    open_as_claimed,
    resize_mask_nearest,
)
from laplace_head.dataset.scan import ScanEntry, escape_line_breaks

EXIF_ORIENTATION_TAG = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass
class SampleCheck:
    """Outcome of validating one sample; ``reason`` is empty when valid."""

    image_h: int = 0
    image_w: int = 0
    mask_h: int = 0
    mask_w: int = 0
    size_mismatch: bool = False
    reason: str = ""

    @property
    def valid(self) -> bool:
        return not self.reason


def check_sample(entry: ScanEntry) -> SampleCheck:
    """Decode the image and mask of ``entry`` and check them.

    Failure reasons: the pairing reason from the scan, ``image fails to decode: ...`` (also for
    content that is not the format the extension claims), ``image too large ...``,
    ``mask unreadable: ...``, ``mask too large ...``, ``mask is not 2D``,
    ``mask has no foreground``, ``mask is all foreground``, ``mask follows the EXIF-rotated
    (displayed) orientation ...`` (a transposed mask for an image whose EXIF tag rotates it by
    90 degrees: masks must follow the stored pixel grid), ``mask has no foreground/background
    after resizing ...``, ``out of memory while checking the sample ...`` and
    ``check failed: <error>`` (anything else going wrong on this sample). A mask/image size
    mismatch is otherwise valid (the mask is resized nearest-neighbour at prompt time) and
    recorded in ``size_mismatch``.

    Never raises for a bad sample: every decode and conversion runs inside one ``try``, so one
    sample cannot stop stage 1. The reason is always one line.
    """
    result = SampleCheck()
    if entry.reason:
        result.reason = entry.reason
        return result
    try:
        _check_decoded(entry, result)
    except ImageReadError as exc:
        result.reason = str(exc)
    except MemoryError as exc:
        result.reason = (
            f"out of memory while checking the sample (MemoryError: {exc}); image "
            f"{result.image_h}x{result.image_w}, mask {result.mask_h}x{result.mask_w}"
        )
    except Exception as exc:  # noqa: BLE001 - one bad sample never stops stage 1
        result.reason = f"check failed: {type(exc).__name__}: {exc}"
    result.reason = escape_line_breaks(result.reason)
    return result


def _check_decoded(entry: ScanEntry, result: SampleCheck) -> None:
    """Decode both files and fill ``result`` (sizes, mismatch, reason); may raise."""
    image = load_image_rgb(entry.image_path)
    result.image_h, result.image_w = int(image.shape[0]), int(image.shape[1])
    del image
    mask = load_mask(entry.mask_path)
    result.mask_h, result.mask_w = int(mask.shape[0]), int(mask.shape[1])
    result.size_mismatch = (result.mask_h, result.mask_w) != (result.image_h, result.image_w)
    transposed = result.size_mismatch and (result.mask_h, result.mask_w) == (
        result.image_w,
        result.image_h,
    )
    foreground = int(np.count_nonzero(mask))
    if foreground == 0:
        result.reason = "mask has no foreground"
    elif foreground == mask.size:
        result.reason = "mask is all foreground"
    elif transposed and _exif_transposes(entry.image_path):
        result.reason = (
            "mask follows the EXIF-rotated (displayed) orientation; masks must follow the "
            "stored pixel grid (EXIF orientation is not applied)"
        )
    elif result.size_mismatch:
        # Prompts are drawn on the mask resized to the image: it must still have both regions.
        resized = resize_mask_nearest(mask, result.image_h, result.image_w)
        foreground = int(np.count_nonzero(resized))
        if foreground in (0, resized.size):
            region = "foreground" if foreground == 0 else "background"
            result.reason = (
                f"mask has no {region} after resizing to the image size "
                f"({result.image_h}x{result.image_w})"
            )


def _exif_transposes(image_path: str) -> bool:
    """Whether the image's EXIF orientation tag swaps width and height when displayed."""
    try:
        with open_as_claimed(image_path, "image") as image:
            return image.getexif().get(EXIF_ORIENTATION_TAG, 1) in TRANSPOSING_ORIENTATIONS
    except Exception:  # noqa: BLE001 - the pixels decoded; unreadable EXIF means no rotation
        return False
