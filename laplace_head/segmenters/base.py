"""The interface every frozen base segmenter implements.

A segmenter is a stateful wrapper around a frozen model, in the style of segment_anything's
``SamPredictor``: :meth:`BaseSegmenter.set_image` does the per-image work once (SAM's image
encoder, random_walker's downscaling), :meth:`BaseSegmenter.predict` decodes one prompt set
against it. Calling ``predict`` before ``set_image`` raises :class:`RuntimeError`.

Points are ``(x, y)`` in pixels of the original image (``x`` = column); labels are 1 for a
positive (foreground) and 0 for a negative (background) point. Pixel centres sit at integer
coordinates and pixel ``i`` covers ``[i - 0.5, i + 0.5)`` (the convention of
:func:`~laplace_head.prompts.sampling.rescale_points` and of the grid cells of
:mod:`laplace_head.interactive.clicks`), so a click is on an (H, W) image when ``-0.5 <= x < W -
0.5`` and ``-0.5 <= y < H - 0.5``: :func:`check_clicks` is the one rule every entry point
(segmenters, :class:`~laplace_head.interactive.predictor.InteractivePredictor`,
:class:`~laplace_head.interactive.session.ClickSession`) applies, and :func:`check_image` the one
rule for images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from laplace_head.util.values import short_repr

# Type of one prediction: ((256, 256) float32 logits, kept branch index, per-branch scores).
Prediction = tuple[np.ndarray, int, list[float]]

#: Half a pixel: pixel ``i`` covers ``[i - PIXEL_HALF_WIDTH, i + PIXEL_HALF_WIDTH)``.
PIXEL_HALF_WIDTH = 0.5
# NumPy dtype kinds of real numbers (signed, unsigned, floating): bool, complex, str and
# object arrays are refused as coordinates and labels.
_REAL_KINDS = "iuf"


def image_extent(image_hw: tuple[int, int]) -> tuple[tuple[float, float], tuple[float, float]]:
    """``((x_min, x_max), (y_min, y_max))``: a click ``(x, y)`` is on the (H, W) image when
    ``x_min <= x < x_max`` and ``y_min <= y < y_max`` (the pixels' union, half-open)."""
    height, width = image_hw
    return (
        (-PIXEL_HALF_WIDTH, width - PIXEL_HALF_WIDTH),
        (-PIXEL_HALF_WIDTH, height - PIXEL_HALF_WIDTH),
    )


def _real_array(value: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise ValueError(
            f"{name} must be an array of numbers; got {short_repr(value)} ({exc})"
        ) from exc
    if array.dtype.kind not in _REAL_KINDS:
        raise ValueError(
            f"{name} must hold real numbers (int or float); got dtype {array.dtype} "
            f"({short_repr(value)})"
        )
    return array


def check_labels(labels: Any, n_points: int | None = None, name: str = "labels") -> np.ndarray:
    """Click labels as an (N,) int64 array; each must be exactly 1 (positive) or 0 (negative).

    Ints and floats equal to 0 or 1 are accepted (``1.0``); bools, strings, other values
    (``0.9`` is not truncated to 0) and arrays that are not 1-D are refused with a ValueError.
    """
    array = _real_array(labels, name)
    if array.ndim != 1 or (n_points is not None and len(array) != n_points):
        expected = "(N,)" if n_points is None else f"({n_points},), one per point"
        raise ValueError(f"{name} must have shape {expected}; got shape {array.shape}")
    bad = ~np.isin(array, (0, 1))
    if bad.any():
        raise ValueError(
            f"labels must be 1 (positive) or 0 (negative), exactly; {name} holds "
            f"{array[bad][:5].tolist()}"
        )
    return array.astype(np.int64)


def check_clicks(
    points_xy: Any,
    labels: Any,
    image_hw: tuple[int, int],
    names: tuple[str, str] = ("points_xy", "labels"),
    min_points: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The click rule: (N, 2) ``(x, y)`` points on an (H, W) image and their (N,) labels.

    Parameters
    ----------
    points_xy
        (N, 2) real numbers, ``(x, y)`` in original-image pixels, finite and on the image
        (:func:`image_extent`: ``-0.5 <= x < W - 0.5``, ``-0.5 <= y < H - 0.5``).
    labels
        (N,) exactly 0 or 1 (:func:`check_labels`).
    image_hw
        (H, W) of the image.
    names
        The argument names the messages use (``point_coords``, ``point_labels`` in the
        predictor).
    min_points
        The least N accepted.

    Returns
    -------
    tuple
        (N, 2) float64 points and (N,) int64 labels.

    Raises
    ------
    ValueError
        Naming the value and the valid range: wrong shape, non-real dtype (bool, str),
        non-finite or off-image coordinates, labels other than 0/1, N < ``min_points``.
    """
    points_name, labels_name = names
    points = _real_array(points_xy, points_name)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(
            f"{points_name} must have shape (N, 2), one (x, y) per row; got shape {points.shape}"
        )
    if len(points) < min_points:
        raise ValueError(f"{points_name} needs N >= {min_points} points; got {len(points)}")
    labels_out = check_labels(labels, len(points), labels_name)
    points = points.astype(np.float64)
    finite = np.isfinite(points).all(axis=1)
    if not finite.all():
        index = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"{points_name}[{index}] = {tuple(points[index].tolist())} is not finite; "
            "coordinates must be finite pixel positions"
        )
    (x_min, x_max), (y_min, y_max) = image_extent(image_hw)
    inside = (
        (points[:, 0] >= x_min)
        & (points[:, 0] < x_max)
        & (points[:, 1] >= y_min)
        & (points[:, 1] < y_max)
    )
    if not inside.all():
        index = int(np.flatnonzero(~inside)[0])
        raise ValueError(
            f"{points_name}[{index}] = (x, y) = {tuple(points[index].tolist())} lies outside the "
            f"{image_hw[0]}x{image_hw[1]} (H x W) image: x must be in [{x_min}, {x_max}) and y "
            f"in [{y_min}, {y_max}) (pixel i covers [i - 0.5, i + 0.5))"
        )
    return points, labels_out


def check_image(image_rgb: Any) -> np.ndarray:
    """The image rule: an (H, W, 3) uint8 RGB array with H, W >= 1, returned as an array.

    Raises
    ------
    ValueError
        Naming the shape and dtype given and what is accepted.
    """
    if isinstance(image_rgb, np.ndarray):
        array = image_rgb
    else:
        try:
            array = np.asarray(image_rgb)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"set_image expects an (H, W, 3) uint8 RGB array; got {short_repr(image_rgb)}"
            ) from exc
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        hint = ""
        if array.dtype.kind == "f":
            hint = " (floats in [0, 1]: np.round(image * 255).astype(np.uint8))"
        elif array.ndim == 3 and array.shape[2] == 4:
            hint = " (RGBA: drop the alpha channel, image[..., :3])"
        elif array.ndim == 2:
            hint = " (greyscale: np.repeat(image[..., None], 3, axis=2))"
        raise ValueError(
            f"set_image expects an (H, W, 3) uint8 RGB array; got shape {array.shape} and "
            f"dtype {array.dtype}{hint}"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(
            f"set_image got an empty image of shape {array.shape}; height and width must be >= 1"
        )
    return array


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

    def check_image(self, image_rgb: Any) -> np.ndarray:
        """``image_rgb`` as an array if :meth:`set_image` can take it, else ValueError:
        :func:`check_image`, then what the backend needs (:meth:`_check_image_hw`)."""
        array = check_image(image_rgb)
        self._check_image_hw(int(array.shape[0]), int(array.shape[1]))
        return array

    def _check_image_hw(self, height: int, width: int) -> None:
        """Backend limits on the image size (ValueError); none here."""

    def set_image(self, image_rgb: np.ndarray) -> None:
        """Do the per-image work for ``image_rgb``, an (H, W, 3) uint8 RGB array, H, W >= 1.

        A refused image (ValueError, :meth:`check_image`) also unsets the current one, so that
        no prediction is made on an image the caller has moved on from.
        """
        self._image_hw = None
        image_rgb = self.check_image(image_rgb)
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
        if isinstance(prompt_sets, str | bytes) or not isinstance(prompt_sets, Sequence):
            raise TypeError(
                "prompt_sets must be a sequence of (points_xy, labels) pairs; got "
                f"{type(prompt_sets).__name__}"
            )
        for index, pair in enumerate(prompt_sets):
            if not isinstance(pair, Sequence) or isinstance(pair, str | bytes) or len(pair) != 2:
                raise ValueError(
                    f"prompt_sets[{index}] must be a (points_xy, labels) pair; "
                    f"got {short_repr(pair)}"
                )
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
        return check_clicks(points_xy, labels, self.image_hw)

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
