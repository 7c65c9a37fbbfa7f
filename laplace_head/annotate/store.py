"""The annotator's saved masks: one owner of the output folder's format.

``--out`` is a masks root that a new run takes as ``data.masks_root``: the nested layout of the
dataset, ``<out>/<class>/<stem>.png`` (8-bit greyscale, 0 = background, 255 = foreground, the
image's size), each with a sidecar ``<out>/<class>/<stem>.json`` that stage 1 ignores (it reads
only ``.npy`` / ``.png`` masks). The sidecar records how the mask was made (:data:`SIDECAR_KEYS`).

Both files are written atomically (:func:`laplace_head.util.atomic.atomic_path`): a process
killed while saving leaves the old PNG or the new one, never a partial file; the next save of
the image removes the temporary file such a kill leaves. The PNG is renamed
into place first, then the sidecar; the sidecar's ``mask_md5`` names the PNG it describes.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from laplace_head.annotate.catalog import AnnotateRequestError, ImageRecord
from laplace_head.util.atomic import (
    atomic_path,
    atomic_write_json,
    read_json,
    remove_stale_temp_files,
)
from laplace_head.util.faults import fault_point

MASK_SUFFIX = ".png"
SIDECAR_SUFFIX = ".json"
#: The keys of a sidecar JSON (the writer fills every one).
SIDECAR_KEYS = (
    "sample_id",
    "image_path",
    "image_hw",
    "clicks",
    "run_id",
    "posterior_variant",
    "posterior",
    "head",
    "laplace_dir",
    "base_segmenter",
    "suggest_policy",
    "expected_error",
    "mask_md5",
    "saved_at",
)


def encode_mask_png(mask: np.ndarray) -> bytes:
    """An (H, W) bool mask as PNG bytes, 8-bit greyscale 0/255."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise ValueError(f"mask must be (H, W) bool; got shape {mask.shape}, dtype {mask.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


class MaskStore:
    """The masks root ``out``: paths, status and atomic saving.

    Parameters
    ----------
    out
        The folder (created on the first save).
    """

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)

    def mask_path(self, record: ImageRecord) -> Path:
        """``<out>/<class>/<stem>.png``."""
        return self.out / record.class_name / (record.stem + MASK_SUFFIX)

    def sidecar_path(self, record: ImageRecord) -> Path:
        """``<out>/<class>/<stem>.json``."""
        return self.out / record.class_name / (record.stem + SIDECAR_SUFFIX)

    def is_saved(self, record: ImageRecord) -> bool:
        """Whether the image has a saved mask."""
        return self.mask_path(record).is_file()

    def read_sidecar(self, record: ImageRecord) -> dict[str, Any] | None:
        """The saved sidecar of ``record``, or None when there is none (or it does not parse)."""
        path = self.sidecar_path(record)
        if not path.is_file():
            return None
        try:
            sidecar = read_json(path)
        except (OSError, ValueError):
            return None
        return sidecar if isinstance(sidecar, dict) else None

    def save(
        self,
        record: ImageRecord,
        mask: np.ndarray,
        sidecar: dict[str, Any],
        overwrite: bool = False,
    ) -> Path:
        """Write the mask PNG and its sidecar atomically; return the PNG's path.

        Parameters
        ----------
        record
            The image.
        mask
            (H, W) bool mask at image size.
        sidecar
            Every key of :data:`SIDECAR_KEYS` but ``mask_md5`` (added here).
        overwrite
            Replace an existing mask; without it an existing mask is an error.

        Raises
        ------
        AnnotateRequestError
            409 when the mask exists and ``overwrite`` is false.
        """
        path = self.mask_path(record)
        if path.exists() and not overwrite:
            raise AnnotateRequestError(
                409,
                f"{str(path)!r} exists; save again with overwrite to replace it",
            )
        data = encode_mask_png(mask)
        missing = set(SIDECAR_KEYS) - {"mask_md5"} - set(sidecar)
        if missing:
            raise ValueError(f"sidecar lacks {sorted(missing)}")
        sidecar_path = self.sidecar_path(record)
        # the debris of a save that was killed (this folder's names are the annotator's alone)
        remove_stale_temp_files(path.parent, [path.name, sidecar_path.name])
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
            fault_point("annotate_save")  # the new PNG is complete but not yet renamed
        atomic_write_json(
            sidecar_path,
            {**sidecar, "mask_md5": hashlib.md5(data).hexdigest()},
        )
        return path
