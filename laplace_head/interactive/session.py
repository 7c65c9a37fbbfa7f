"""ClickSession: the click history of one image on an :class:`InteractivePredictor`, with undo.

The predictor is stateless per call (:meth:`InteractivePredictor.predict
<laplace_head.interactive.predictor.InteractivePredictor.predict>` decodes one click set); a
session keeps the clicks made so far and their predictions, so that a click or an undo costs at
most one prediction. Stage 8's simulation (:mod:`laplace_head.interactive.simulate`) and an
annotator use it the same way: ``set_image``, ``add_click``, ``predict``, ``suggest``,
``undo``.

With the predictor's ``sam_mask_input`` each prediction is fed the low-resolution logits of the
prediction before it (the RITM protocol); an undo returns to the earlier prediction as it was.

A session remembers which image it set on the predictor: when the predictor has another image
since (a direct ``predictor.set_image`` or another session on the same predictor), decoding or
suggesting raises a RuntimeError instead of mixing one image's clicks with another's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from laplace_head.interactive.clicks import Suggestion
from laplace_head.interactive.predictor import InteractivePrediction, InteractivePredictor
from laplace_head.segmenters.base import check_clicks


@dataclass(frozen=True)
class Click:
    """One click: ``(x, y)`` in original-image pixels (x = column), label 1 = positive."""

    x: float
    y: float
    label: int


class ClickSession:
    """The clicks on one image and their predictions.

    Parameters
    ----------
    predictor
        The predictor that decodes the clicks; the session sets its image.
    image_rgb
        Optional (H, W, 3) uint8 image to start with (see :meth:`set_image`).
    """

    def __init__(self, predictor: InteractivePredictor, image_rgb: np.ndarray | None = None):
        if not isinstance(predictor, InteractivePredictor):
            raise TypeError(
                f"predictor must be an InteractivePredictor; got {type(predictor).__name__}"
            )
        self.predictor = predictor
        self._clicks: list[Click] = []
        self._predictions: list[InteractivePrediction | None] = []
        self._image_digest: str | None = None
        if image_rgb is not None:
            self.set_image(image_rgb)

    def set_image(self, image_rgb: np.ndarray) -> None:
        """Start over on an (H, W, 3) uint8 RGB image: the predictor's per-image work (not
        repeated for the image already set) and an empty history. A refused image
        (ValueError) leaves the session without an image."""
        self._image_digest = None
        self._clicks.clear()
        self._predictions.clear()
        self.predictor.set_image(image_rgb)
        self._image_digest = self.predictor.image_digest

    def _require_image(self, action: str) -> None:
        """RuntimeError before :meth:`set_image`, or when the predictor has another image."""
        if self._image_digest is None:
            raise RuntimeError(f"An image must be set with .set_image(...) before {action}.")
        if self.predictor.image_digest != self._image_digest:
            raise RuntimeError(
                f"the predictor's image changed after this session's set_image (a direct "
                f"predictor.set_image or another session on the same predictor); call "
                f"session.set_image(image) again before {action}"
            )

    @property
    def clicks(self) -> tuple[Click, ...]:
        """The click history, oldest first."""
        return tuple(self._clicks)

    def add_click(self, x: float, y: float, label: int) -> None:
        """Append a click (``(x, y)`` image pixels, label 1 / 0); :meth:`predict` decodes it.

        Raises
        ------
        RuntimeError
            Before :meth:`set_image`, or when the predictor has another image.
        ValueError
            For what :func:`~laplace_head.segmenters.base.check_clicks` refuses: a label other
            than exactly 0 / 1 (bools and strings too), a coordinate that is not a finite
            number on the image (``-0.5 <= x < W - 0.5``, ``-0.5 <= y < H - 0.5``).
        """
        self._require_image("clicking")
        if np.ndim(x) != 0 or np.ndim(y) != 0 or np.ndim(label) != 0:
            raise ValueError(
                f"add_click takes one click: scalars x, y and label; got x={x!r}, y={y!r}, "
                f"label={label!r}"
            )
        points, labels = check_clicks(
            [[x, y]], [label], self.predictor.image_hw, ("(x, y)", "label")
        )
        self._clicks.append(Click(float(points[0, 0]), float(points[0, 1]), int(labels[0])))
        self._predictions.append(None)

    def undo(self) -> Click:
        """Remove and return the last click; the prediction of the clicks before it (if made)
        is :meth:`predict`'s again.

        Raises
        ------
        IndexError
            When there is no click to undo.
        """
        if not self._clicks:
            raise IndexError("no click to undo")
        self._predictions.pop()
        return self._clicks.pop()

    def predict(self) -> InteractivePrediction:
        """The prediction of the click history (made on the first call, then cached).

        Raises
        ------
        ValueError
            When there is no click yet.
        """
        if not self._clicks:
            raise ValueError("no clicks yet: add_click(x, y, label) first")
        if self._predictions[-1] is None:
            self._require_image("predicting")
            self._predictions[-1] = self._predict(len(self._clicks))
        return self._predictions[-1]  # type: ignore[return-value]

    def _predict(self, n_clicks: int) -> InteractivePrediction:
        clicks = self._clicks[:n_clicks]
        mask_input = None
        if n_clicks > 1 and self.predictor.sam_mask_input:
            before = self._predictions[n_clicks - 2]
            if before is None:  # clicks added without looking: decode them in order
                before = self._predictions[n_clicks - 2] = self._predict(n_clicks - 1)
            mask_input = self.predictor.next_mask_input(before)
        return self.predictor.predict(
            [(c.x, c.y) for c in clicks], [c.label for c in clicks], mask_input=mask_input
        )

    def suggest(
        self,
        k: int = 1,
        policy: str | None = None,
        seed: int = 0,
        min_distance: float | None = None,
    ) -> list[Suggestion]:
        """The next ``k`` clicks ``policy`` proposes after :meth:`predict`'s prediction
        (:meth:`InteractivePredictor.suggest
        <laplace_head.interactive.predictor.InteractivePredictor.suggest>`; None: the
        predictor's ``suggest_policy``, ``active_prompting.suggest_policy``; the same
        argument checks)."""
        self._require_image("suggesting")
        return self.predictor.suggest(self.predict(), k, policy, seed, min_distance)
