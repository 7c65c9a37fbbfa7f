"""Per-sample integrity checks, each failure with a reason string."""

from __future__ import annotations

from dataclasses import dataclass

from laplace_head.dataset_scan import ScanEntry
from laplace_head.images import ImageReadError, load_image_rgb, load_mask


@dataclass
class ValidationResult:
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


def validate_entry(entry: ScanEntry) -> ValidationResult:
    """Decode the image and mask of ``entry`` and check them.

    Failure reasons: the pairing reason from the scan, ``image fails to decode: ...``,
    ``mask unreadable: ...``, ``mask is not 2D``, ``mask has no foreground``,
    ``mask is all foreground``. A mask/image size mismatch is valid (the mask is resized
    nearest-neighbour at prompt time) and recorded in ``size_mismatch``.
    """
    result = ValidationResult()
    if entry.reason:
        result.reason = entry.reason
        return result
    try:
        image = load_image_rgb(entry.image_path)
        result.image_h, result.image_w = int(image.shape[0]), int(image.shape[1])
    except ImageReadError as exc:
        result.reason = str(exc)
        return result
    try:
        mask = load_mask(entry.mask_path)
    except ImageReadError as exc:
        result.reason = str(exc)
        return result
    result.mask_h, result.mask_w = int(mask.shape[0]), int(mask.shape[1])
    result.size_mismatch = (result.mask_h, result.mask_w) != (result.image_h, result.image_w)
    foreground = int(mask.sum())
    if foreground == 0:
        result.reason = "mask has no foreground"
    elif foreground == mask.size:
        result.reason = "mask is all foreground"
    return result
