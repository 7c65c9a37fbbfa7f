"""InteractivePredictor: the base segmenter + the Laplace head as one click-by-click model.

Modelled on segment_anything's ``SamPredictor``: :meth:`InteractivePredictor.set_image` does the
per-image work once (SAM: one image-encoder pass, the embedding is kept by the segmenter), then
every :meth:`~InteractivePredictor.predict` decodes a set of clicks against it.

Decode protocol (the same as stages 3-4.5 build the head's training inputs)
---------------------------------------------------------------------------
1. The base segmenter's ``predict`` with **all** clicks at once, ``(x, y)`` in original-image
   pixels, labels 1 (positive) / 0 (negative), no mask input: (256, 256) float32 logits.
2. The positive and negative prompt maps: the clicks mapped to the 256 grid with
   :func:`~laplace_head.prompts.sampling.rescale_points` and drawn with
   :func:`~laplace_head.prompts.sampling.gaussian_prompt_map` (std ``prompt_sigma`` grid
   pixels = the config's ``prompt_generation.gaussian_sigma``) - the functions
   ``write_promptset`` uses. A click set without a positive (negative) click gives an all-zero
   positive (negative) map; training always had both, so such inputs are out of distribution
   for the head, but every output stays finite.
3. The head's inputs are assembled by :func:`~laplace_head.cache.split_h5.assemble_inputs`
   from the logits rounded to float16 (stage 3 stores them so) and the float16 maps, the logits
   clipped to ``+-logit_clip``; so the head sees exactly what it would see for the same
   prompts read back from the stage-3 cache.
4. One head pass, :meth:`Posterior.logit_moments <laplace_head.bayes.posterior.Posterior
   .logit_moments>`: the MAP logit and its posterior variance per pixel; then the predictive
   probability, the predictive entropy and BALD by quadrature
   (:func:`~laplace_head.bayes.predictive.gaussian_logit_uncertainty`, no sampling). With
   ``uncertainty="samples"`` they come from ``n_samples`` posterior weight draws instead
   (:func:`~laplace_head.bayes.predictive.uncertainty_from_samples`; the draws are made once,
   seeded, and reused for every prediction, so maps differ between clicks only through the
   inputs).

SAM's previous low-resolution logits are **not** fed back as ``mask_input``:
:class:`~laplace_head.segmenters.sam.SamSegmenter` has no hook for it (its decoder call passes
``masks=None``), and the head was trained on single-pass decodes. Each prediction is therefore
a function of the click set alone, and an undo gives back exactly the earlier prediction.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from laplace_head.bayes.posterior import Posterior, load_posterior
from laplace_head.bayes.predictive import (
    QUADRATURE_NODES,
    gaussian_logit_uncertainty,
    uncertainty_from_samples,
)
from laplace_head.cache.promptset_format import prompt_maps as stage3_prompt_maps
from laplace_head.cache.promptset_format import stored_logits
from laplace_head.cache.split_h5 import assemble_inputs
from laplace_head.interactive.clicks import (
    ClickState,
    correcting_label,
    get_policy,
    grid_to_image,
    image_to_grid,
    suggest_cells,
)
from laplace_head.segmenters import BaseSegmenter, build_segmenter_from_settings
from laplace_head.util.devices import resolve_device
from laplace_head.util.seeding import derive_seed

UNCERTAINTY_MODES = ("quadrature", "samples")


@dataclass(frozen=True)
class Click:
    """One click: ``(x, y)`` in original-image pixels (x = column), label 1 = positive."""

    x: float
    y: float
    label: int


@dataclass
class InteractivePrediction:
    """The outputs of one prediction, every map (256, 256) float32 NumPy on the 256 grid.

    Attributes
    ----------
    base_logits
        The base segmenter's logits (float32, before the float16 rounding of the head input).
    map_logits, map_probability
        The head's MAP logits and ``sigmoid(map_logits)``.
    logit_variance
        Posterior variance of the head's logit (squared log-odds).
    predictive_probability
        ``E[sigmoid(z)]`` under the posterior (quadrature, or the mean over weight samples).
    entropy, expected_entropy, bald
        Predictive entropy ``H(E[p])``, expected entropy ``E[H(p)]`` and BALD (their
        difference, the mutual information), nats.
    points_xy, labels
        The clicks: (k, 2) float64 ``(x, y)`` image pixels and (k,) int64 labels.
    image_hw
        (H, W) of the image.
    branch_index, scores
        The base segmenter's kept branch and per-branch scores.
    uncertainty
        ``quadrature`` or ``samples``.
    timings_s
        Wall-clock seconds of the steps: ``decode`` (base segmenter), ``prompt_maps``,
        ``head`` (one head pass: MAP logits and variance), ``uncertainty``.
    """

    base_logits: np.ndarray
    map_logits: np.ndarray
    map_probability: np.ndarray
    logit_variance: np.ndarray
    predictive_probability: np.ndarray
    entropy: np.ndarray
    expected_entropy: np.ndarray
    bald: np.ndarray
    points_xy: np.ndarray
    labels: np.ndarray
    image_hw: tuple[int, int]
    branch_index: int
    scores: list[float]
    uncertainty: str
    timings_s: dict[str, float] = field(default_factory=dict)

    #: The (256, 256) map fields, for :meth:`to_image`.
    MAP_FIELDS = (
        "base_logits",
        "map_logits",
        "map_probability",
        "logit_variance",
        "predictive_probability",
        "entropy",
        "expected_entropy",
        "bald",
    )
    PROBABILITY_FIELDS = ("map_probability", "predictive_probability")
    NONNEGATIVE_FIELDS = ("logit_variance", "entropy", "expected_entropy", "bald")

    def clicked_cells(self) -> set[tuple[int, int]]:
        """The grid cells ``(row, col)`` of the clicks."""
        rows, cols = image_to_grid(self.points_xy[:, 0], self.points_xy[:, 1], self.image_hw)
        return {(int(r), int(c)) for r, c in zip(np.atleast_1d(rows), np.atleast_1d(cols))}

    def to_image(self, name: str) -> np.ndarray:
        """The map field ``name`` resized to the image, (H, W) float32.

        Bilinear interpolation with pixel centres aligned (``align_corners=False``) and
        anti-aliasing when shrinking, the resize SAM's logits go through
        (:mod:`laplace_head.segmenters.sam`); every field is resized as it is (probabilities
        stay in [0, 1], logits are interpolated as logits). The anti-aliasing filter can
        overshoot by a float32 rounding step, so probabilities are clamped to [0, 1] and
        variances, entropies and BALD at 0. Threshold ``map_probability`` at 0.5 for a
        full-resolution mask.
        """
        if name not in self.MAP_FIELDS:
            raise ValueError(f"unknown field {name!r}; valid: {', '.join(self.MAP_FIELDS)}")
        plane = torch.from_numpy(np.ascontiguousarray(getattr(self, name), dtype=np.float32))
        resized = F.interpolate(
            plane[None, None], self.image_hw, mode="bilinear", align_corners=False, antialias=True
        )[0, 0]
        if name in self.PROBABILITY_FIELDS:
            resized = resized.clamp(0.0, 1.0)
        elif name in self.NONNEGATIVE_FIELDS:
            resized = resized.clamp_min(0.0)
        return resized.numpy()


def prompt_maps(
    points_xy: np.ndarray, labels: np.ndarray, image_hw: tuple[int, int], sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative (256, 256) float16 prompt maps of a click set, as stage 3 builds
    them (:func:`laplace_head.cache.promptset_format.prompt_maps`)."""
    points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(labels).reshape(-1)
    pos_map, neg_map, _, _ = stage3_prompt_maps(
        points[labels == 1], points[labels == 0], image_hw, sigma
    )
    return pos_map, neg_map


def _image_digest(image_rgb: np.ndarray) -> str:
    array = np.ascontiguousarray(image_rgb)
    digest = hashlib.blake2b(array.tobytes(), digest_size=16)
    digest.update(repr((array.shape, array.dtype.str)).encode())
    return digest.hexdigest()


def _has_image(segmenter: BaseSegmenter) -> bool:
    try:
        return len(segmenter.image_hw) == 2
    except RuntimeError:
        return False


class InteractivePredictor:
    """A frozen base segmenter and a fitted Laplace head, predicting click by click.

    Parameters
    ----------
    segmenter
        The base segmenter (the one whose outputs the head was trained on). The predictor owns
        its image state: do not ``set_image`` it behind the predictor's back.
    posterior
        The fitted head (:func:`~laplace_head.bayes.posterior.load_posterior`). Its head is
        fully convolutional, so it runs on the 256 grid whatever size it was fitted on.
    prompt_sigma
        Std of the prompt maps' Gaussians in grid pixels (``prompt_generation.gaussian_sigma``).
    uncertainty
        ``quadrature`` (default: closed-form moments + quadrature, deterministic) or
        ``samples`` (``n_samples`` posterior weight draws, seeded by ``seed``).
    n_nodes
        Quadrature nodes per pixel.
    """

    def __init__(
        self,
        segmenter: BaseSegmenter,
        posterior: Posterior,
        prompt_sigma: float,
        uncertainty: str = "quadrature",
        n_samples: int = 32,
        seed: int = 0,
        n_nodes: int = QUADRATURE_NODES,
    ) -> None:
        if uncertainty not in UNCERTAINTY_MODES:
            raise ValueError(
                f"uncertainty = {uncertainty!r} is not one of {', '.join(UNCERTAINTY_MODES)}"
            )
        if not prompt_sigma > 0:
            raise ValueError(f"prompt_sigma must be > 0; got {prompt_sigma}")
        self.segmenter = segmenter
        self.posterior = posterior
        self.prompt_sigma = float(prompt_sigma)
        self.uncertainty = uncertainty
        self.n_nodes = int(n_nodes)
        self.seed = int(seed)
        self._weight_samples: torch.Tensor | None = None
        if uncertainty == "samples":
            generator = torch.Generator(device=posterior.device).manual_seed(
                derive_seed(seed, "interactive_weights")
            )
            self._weight_samples = posterior.sample_weights(n_samples, generator)
        self._image_digest: str | None = None
        self._clicks: list[Click] = []
        self._predictions: list[InteractivePrediction | None] = []

    @classmethod
    def from_config(
        cls,
        segmenter_settings: dict[str, Any],
        laplace_dir: str | os.PathLike,
        prompt_sigma: float,
        device: str = "cpu",
        **kwargs: Any,
    ) -> InteractivePredictor:
        """Build the segmenter and load the posterior from settings and a stage-6 folder.

        Parameters
        ----------
        segmenter_settings
            Keyword arguments of :func:`~laplace_head.segmenters.build_segmenter_from_settings`
            (the ``sam`` config section's values, e.g. ``settings.segmenter_params(config)``).
            A SAM backend without ``device`` gets ``device``.
        laplace_dir
            The fitted Laplace run (anything :func:`load_posterior` accepts).
        prompt_sigma
            ``prompt_generation.gaussian_sigma``.
        device
            auto | cuda | cpu, for the head (and SAM when the settings name no device).
        **kwargs
            Passed to the constructor (``uncertainty``, ``n_samples``, ``seed``, ``n_nodes``).
        """
        settings = dict(segmenter_settings)
        if settings.get("backend") == "sam":
            settings.setdefault("device", device)
        segmenter = build_segmenter_from_settings(**settings)
        posterior = load_posterior(laplace_dir, device=resolve_device(device, "device"))
        return cls(segmenter, posterior, prompt_sigma, **kwargs)

    # --- image --------------------------------------------------------------------------------

    def set_image(self, image_rgb: np.ndarray) -> None:
        """Do the per-image work for an (H, W, 3) uint8 RGB image and clear the click history.

        Setting the image that is already set (same pixels) only clears the history: the
        segmenter's per-image work (SAM's encoder) is not repeated.
        """
        digest = _image_digest(np.asarray(image_rgb))
        if digest != self._image_digest or not _has_image(self.segmenter):
            self._image_digest = None
            self.segmenter.set_image(image_rgb)
            self._image_digest = digest
        self._clicks.clear()
        self._predictions.clear()

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the current image; RuntimeError before :meth:`set_image`."""
        if self._image_digest is None:
            raise RuntimeError("An image must be set with .set_image(...) before prediction.")
        return self.segmenter.image_hw

    # --- prediction ---------------------------------------------------------------------------

    def predict(self, points_xy: Any, labels: Any) -> InteractivePrediction:
        """Base segmenter + head on one click set (see the module docstring's protocol).

        Parameters
        ----------
        points_xy
            (k, 2) ``(x, y)`` in original-image pixels, k >= 1.
        labels
            (k,) 1 = positive, 0 = negative.

        Raises
        ------
        RuntimeError
            Before :meth:`set_image`.
        ValueError
            For no points, mismatched lengths or labels other than 0/1.
        """
        image_hw = self.image_hw
        points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        logits, branch_index, scores = self.segmenter.predict(points, labels)
        logits = np.asarray(logits, dtype=np.float32)
        timings["decode"] = time.perf_counter() - start

        start = time.perf_counter()
        pos_map, neg_map = prompt_maps(points, labels, image_hw, self.prompt_sigma)
        inputs = assemble_inputs(
            stored_logits(logits)[None], pos_map[None], neg_map[None], self.posterior.logit_clip
        )
        timings["prompt_maps"] = time.perf_counter() - start

        start = time.perf_counter()
        map_logits, variance = self.posterior.logit_moments(inputs)
        timings["head"] = time.perf_counter() - start

        start = time.perf_counter()
        if self._weight_samples is None:
            maps = gaussian_logit_uncertainty(map_logits, variance, self.n_nodes)
        else:
            samples = self.posterior.sample_logits(inputs, weight_samples=self._weight_samples)
            maps = uncertainty_from_samples(samples)
        timings["uncertainty"] = time.perf_counter() - start

        def plane(tensor: torch.Tensor) -> np.ndarray:
            return tensor[0].detach().float().cpu().numpy()

        return InteractivePrediction(
            base_logits=logits,
            map_logits=plane(map_logits),
            map_probability=plane(torch.sigmoid(map_logits)),
            logit_variance=plane(variance),
            predictive_probability=plane(maps["mean_probability"]),
            entropy=plane(maps["predictive_entropy"]),
            expected_entropy=plane(maps["expected_entropy"]),
            bald=plane(maps["mutual_information"]),
            points_xy=points,
            labels=labels,
            image_hw=image_hw,
            branch_index=int(branch_index),
            scores=[float(s) for s in scores],
            uncertainty=self.uncertainty,
            timings_s=timings,
        )

    # --- click history ------------------------------------------------------------------------

    @property
    def clicks(self) -> tuple[Click, ...]:
        """The click history of the current image, oldest first."""
        return tuple(self._clicks)

    def add_click(self, x: float, y: float, label: int) -> None:
        """Append a click (``(x, y)`` image pixels, label 1 / 0); predict with
        :meth:`predict_clicks`."""
        _ = self.image_hw  # raises before set_image
        if int(label) not in (0, 1) or int(label) != label:
            raise ValueError(f"label must be 1 (positive) or 0 (negative); got {label!r}")
        if not (np.isfinite(x) and np.isfinite(y)):
            raise ValueError(f"click coordinates must be finite; got ({x}, {y})")
        self._clicks.append(Click(float(x), float(y), int(label)))
        self._predictions.append(None)

    def undo(self) -> Click:
        """Remove and return the last click; the prediction of the clicks before it (if made)
        becomes :attr:`last_prediction` again.

        Raises
        ------
        IndexError
            When there is no click to undo.
        """
        if not self._clicks:
            raise IndexError("no click to undo")
        self._predictions.pop()
        return self._clicks.pop()

    def predict_clicks(self) -> InteractivePrediction:
        """:meth:`predict` with the click history (cached: a repeated call or an undo back to
        an earlier history returns the prediction already made).

        Raises
        ------
        ValueError
            When there is no click yet.
        """
        if not self._clicks:
            raise ValueError("no clicks yet: add_click(x, y, label) first")
        if self._predictions[-1] is None:
            points = [(c.x, c.y) for c in self._clicks]
            labels = [c.label for c in self._clicks]
            self._predictions[-1] = self.predict(points, labels)
        return self._predictions[-1]  # type: ignore[return-value]

    @property
    def last_prediction(self) -> InteractivePrediction | None:
        """The prediction of the current click history, or None when not predicted yet."""
        return self._predictions[-1] if self._predictions else None

    # --- suggestions --------------------------------------------------------------------------

    def lookahead(
        self, prediction: InteractivePrediction
    ) -> Callable[[tuple[int, int], int], np.ndarray]:
        """The look-ahead of ``prediction`` for :attr:`ClickState.lookahead
        <laplace_head.interactive.clicks.ClickState.lookahead>`.

        ``lookahead((row, col), label)`` is the (256, 256) predictive probability of
        :meth:`predict` on ``prediction``'s clicks plus one click with ``label`` at the cell's
        centre (:func:`~laplace_head.interactive.clicks.grid_to_image`). The click history is
        not touched; results are cached per (cell, label). ``prediction`` must be of the
        current image.
        """
        points = np.asarray(prediction.points_xy, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(prediction.labels, dtype=np.int64).reshape(-1)
        image_hw = prediction.image_hw
        cache: dict[tuple[tuple[int, int], int], np.ndarray] = {}

        def predict_with(cell: tuple[int, int], label: int) -> np.ndarray:
            key = ((int(cell[0]), int(cell[1])), int(label))
            if key not in cache:
                x, y = grid_to_image(key[0][0], key[0][1], image_hw)
                extended = self.predict(np.vstack([points, [[x, y]]]), np.append(labels, key[1]))
                cache[key] = extended.predictive_probability
            return cache[key]

        return predict_with

    def suggest(
        self,
        k: int = 1,
        policy: str = "bald",
        prediction: InteractivePrediction | None = None,
        seed: int = 0,
        gt_256: np.ndarray | None = None,
        min_distance: float | None = None,
    ) -> list[tuple[float, float, int]]:
        """The next ``k`` clicks a policy proposes, ``[(x, y, suggested_label), ...]``.

        Parameters
        ----------
        k
            Number of suggestions (fewer when the policy runs out of cells).
        policy
            A name in :data:`~laplace_head.interactive.clicks.POLICIES` (``bald``,
            ``bald_raw``, ``bald_region``, ``bald_lookahead``, ``entropy``, ``map_margin``,
            ``random``, ``oracle``). ``bald_lookahead`` re-predicts
            (:meth:`lookahead`, 2 predictions per candidate) without touching the click
            history; ``prediction`` must then be of the current image.
        prediction
            The prediction to suggest from; default :attr:`last_prediction`. Its clicked cells
            are never suggested.
        seed
            Seeds the ``random`` policy (with the number of clicks and the suggestion index).
        gt_256
            (256, 256) bool ground truth; only the ``oracle`` policy reads it (and needs it).
        min_distance
            Suggestions after the first keep at least this distance (grid pixels) from the
            earlier ones, so they point at different regions; default ``2 * prompt_sigma``,
            0 turns it off.

        Returns
        -------
        list of tuple
            ``(x, y)`` in original-image pixels (the cell centre) and the suggested label:
            **1 where the head's MAP probability is < 0.5, else 0** - the click that would
            correct the head there. Uncertainty policies point at cells where the head is
            likely wrong, and a user clicks where a mask is wrong (the RITM protocol); the
            rule also gives the oracle's label at an oracle click (an FN cell has p < 0.5, an
            FP cell p >= 0.5). (:meth:`Posterior.score_prompts
            <laplace_head.bayes.posterior.Posterior.score_prompts>` suggests the predicted
            class instead: a confirming click.)
        """
        prediction = prediction if prediction is not None else self.last_prediction
        if prediction is None:
            raise RuntimeError("nothing to suggest from: call predict_clicks() (or predict) first")
        get_policy(policy)  # an unknown name fails before any work
        if policy == "oracle" and gt_256 is None:
            raise ValueError("the oracle policy needs gt_256")
        distance = 2.0 * self.prompt_sigma if min_distance is None else float(min_distance)
        state = ClickState(
            map_probability=prediction.map_probability,
            entropy=prediction.entropy,
            bald=prediction.bald,
            clicked=prediction.clicked_cells(),
            gt=np.asarray(gt_256, dtype=bool) if policy == "oracle" else None,
            predictive_probability=prediction.predictive_probability,
            lookahead=self.lookahead(prediction),
        )
        cells = suggest_cells(state, policy, k, distance, seed, (len(prediction.labels),))
        suggestions: list[tuple[float, float, int]] = []
        for cell in cells:
            x, y = grid_to_image(cell[0], cell[1], prediction.image_hw)
            suggestions.append(
                (float(x), float(y), correcting_label(prediction.map_probability, cell))
            )
        return suggestions
