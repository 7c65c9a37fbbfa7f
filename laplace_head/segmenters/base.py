"""The interface every frozen base segmenter implements.

A segmenter is a stateful wrapper around a frozen model, in the style of segment_anything's
``SamPredictor``: :meth:`BaseSegmenter.set_image` does the per-image work once (SAM's image
encoder, random_walker's downscaling), :meth:`BaseSegmenter.predict` decodes one prompt set
against it. Calling ``predict`` before ``set_image`` raises :class:`RuntimeError`.

Points are ``(x, y)`` in pixels of the original image (``x`` = column); labels are 1 for a
positive (foreground) and 0 for a negative (background) point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Type of one prediction: ((256, 256) float32 logits, kept branch index, per-branch scores).
Prediction = tuple[np.ndarray, int, list[float]]


class BaseSegmenter:
    """Base class: subclasses implement :meth:`_set_image` and :meth:`_predict`."""

    #: Registry name of the backend (``sam``, ``random_walker``).
    name: str = "base"
    #: Whether :meth:`predict_with_mask` takes a low-resolution mask input (SAM only).
    supports_mask_input: bool = False
    #: Whether :meth:`predict_batch` decodes one set at a time, so that its results equal
    #: :meth:`predict`'s bit for bit (False where a batch is decoded in one call).
    batch_equals_single: bool = True

    def __init__(self) -> None:
        self._image_hw: tuple[int, int] | None = None

    @property
    def info(self) -> dict[str, Any]:
        """JSON-serialisable description: at least ``name``, ``model_type``, ``checkpoint``,
        ``checkpoint_md5`` (``None`` where they do not apply) and ``fingerprint``, a string that
        changes whenever the logits this segmenter produces could change."""
        raise NotImplementedError

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the image currently set."""
        if self._image_hw is None:
            raise RuntimeError("An image must be set with .set_image(...) first.")
        return self._image_hw

    def set_image(self, image_rgb: np.ndarray) -> None:
        """Do the per-image work for ``image_rgb``, an (H, W, 3) uint8 RGB array."""
        image_rgb = np.asarray(image_rgb)
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(
                f"set_image expects an (H, W, 3) uint8 RGB array; got shape {image_rgb.shape} "
                f"and dtype {image_rgb.dtype}"
            )
        self._image_hw = None
        self._set_image(image_rgb)
        self._image_hw = (int(image_rgb.shape[0]), int(image_rgb.shape[1]))

    def predict(self, points_xy: np.ndarray, labels: np.ndarray) -> Prediction:
        """Decode one prompt set against the image set by :meth:`set_image`.

        Parameters
        ----------
        points_xy
            (N, 2) float, (x, y) in pixels of the original image.
        labels
            (N,) int, 1 = positive point, 0 = negative point.

        Returns
        -------
        logits_256
            (256, 256) float32 foreground logits (the image resized to 256 x 256, pixel centres
            aligned).
        branch_index
            Index of the kept output branch (SAM's highest predicted IoU; 0 when single).
        scores
            One score per branch (SAM: predicted IoU of each of its three masks).
        """
        return self.predict_batch([(points_xy, labels)])[0]

    def predict_batch(
        self,
        prompt_sets: Sequence[tuple[np.ndarray, np.ndarray]],
        mask_input: np.ndarray | None = None,
    ) -> list[Prediction]:
        """:meth:`predict` for several prompt sets of the current image, in order.

        Each result equals :meth:`predict` of its set (SAM: to float rounding, as its sets are
        decoded together; here a backend decodes one set at a time). With ``mask_input`` (the
        (1, h, w) low-resolution logits of :meth:`predict_with_mask`) every set is decoded with
        that one mask input, as :meth:`predict_with_mask` would; the low-resolution logits of
        the results are not returned.
        """
        if mask_input is not None:
            self._require_mask_input()
        if self._image_hw is None:
            raise RuntimeError("An image must be set with .set_image(...) before prediction.")
        checked = [self._check_prompts(points, labels) for points, labels in prompt_sets]
        if mask_input is None:
            return self._predict_batch(checked)
        return self._predict_batch_with_mask(checked, mask_input)

    def predict_with_mask(
        self, points_xy: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None = None
    ) -> tuple[Prediction, np.ndarray]:
        """:meth:`predict` fed a previous low-resolution mask, as SAM's interactive protocol does.

        Parameters
        ----------
        points_xy, labels
            As for :meth:`predict`.
        mask_input
            None, or the (1, h, w) low-resolution logits a previous call returned (SAM:
            ``SamPredictor.predict``'s ``mask_input``; h = w = 256 for the official models).

        Returns
        -------
        tuple
            The :data:`Prediction` and the kept branch's (1, h, w) float32 low-resolution
            logits, to feed back as the next call's ``mask_input``.

        Raises
        ------
        ValueError
            For a backend without a mask input (random_walker) or a ``mask_input`` of the
            wrong shape.
        """
        self._require_mask_input()
        if self._image_hw is None:
            raise RuntimeError("An image must be set with .set_image(...) before prediction.")
        points, labels = self._check_prompts(points_xy, labels)
        return self._predict_with_mask(points, labels, mask_input)

    def _require_mask_input(self) -> None:
        if not self.supports_mask_input:
            raise ValueError(
                f"the {self.name} base segmenter takes no mask input: feeding the previous "
                "low-resolution logits back (mask_input, active_prompting.sam_mask_input) needs "
                "sam.backend: sam; set active_prompting.sam_mask_input: false"
            )

    def _predict_with_mask(
        self, points_xy: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None
    ) -> tuple[Prediction, np.ndarray]:
        raise NotImplementedError

    def _check_prompts(self, points_xy: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
        points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(points) != len(labels) or len(points) == 0:
            raise ValueError(
                f"need N >= 1 points and N labels; got {len(points)} points, {len(labels)} labels"
            )
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"labels must be 1 (positive) or 0 (negative); got {labels.tolist()}")
        return points, labels

    def _set_image(self, image_rgb: np.ndarray) -> None:
        raise NotImplementedError

    def _predict_batch(self, prompt_sets: list[tuple[np.ndarray, np.ndarray]]) -> list[Prediction]:
        return [self._predict(points, labels) for points, labels in prompt_sets]

    def _predict_batch_with_mask(
        self, prompt_sets: list[tuple[np.ndarray, np.ndarray]], mask_input: np.ndarray
    ) -> list[Prediction]:
        return [self._predict_with_mask(p, labels, mask_input)[0] for p, labels in prompt_sets]

    def _predict(self, points_xy: np.ndarray, labels: np.ndarray) -> Prediction:
        raise NotImplementedError
