"""InteractivePredictor: the base segmenter + the Laplace head as one click-by-click model.

Shaped like segment_anything's ``SamPredictor``: :meth:`InteractivePredictor.set_image` does the
per-image work once (SAM: one image-encoder pass, the embedding is kept by the segmenter), then
every :meth:`~InteractivePredictor.predict` decodes one set of clicks against it, with
SamPredictor's argument names (``point_coords``, ``point_labels``, ``mask_input``, ...). The
predictor keeps no click history: :class:`~laplace_head.interactive.session.ClickSession` does.

Decode protocol (the same as stages 3-4.5 build the head's training inputs)
---------------------------------------------------------------------------
1. The base segmenter's ``predict`` with **all** clicks at once, ``(x, y)`` in original-image
   pixels, labels 1 (positive) / 0 (negative): (256, 256) float32 logits. No mask input unless
   one is given (``mask_input``) or the predictor was built with ``sam_mask_input=True``, the
   RITM protocol of feeding SAM its previous low-resolution logits; stage 3 decodes without
   one, so that switch shows the head inputs it was not trained on.
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
   (:meth:`Posterior.uncertainty_maps <laplace_head.bayes.posterior.Posterior
   .uncertainty_maps>`, no sampling). With ``uncertainty="samples"`` they come from
   ``n_samples`` posterior weight draws instead (the draws are made once, seeded, and reused
   for every prediction, so maps differ between clicks only through the inputs).

Without a mask input each prediction is a function of the click set alone, so an undo gives
back exactly the earlier prediction.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from laplace_head.bayes.posterior import Posterior, load_posterior
from laplace_head.bayes.predictive import QUADRATURE_NODES, UncertaintyInputError
from laplace_head.cache.promptset_format import prompt_maps as stage3_prompt_maps
from laplace_head.cache.promptset_format import stored_logits
from laplace_head.cache.split_h5 import assemble_inputs
from laplace_head.interactive.clicks import (
    GROUND_TRUTH_POLICIES,
    POLICIES,
    PREDICTIVE_FIELD,
    Cell,
    ClickState,
    Lookahead,
    PolicySettings,
    Suggestion,
    grid_to_image,
    image_to_grid,
    suggest,
)
from laplace_head.segmenters import BaseSegmenter, build_segmenter_from_settings
from laplace_head.util.devices import resolve_device
from laplace_head.util.seeding import derive_seed

UNCERTAINTY_MODES = ("quadrature", "samples")
#: The mask threshold on the predictive probability (:attr:`InteractivePrediction.masks`).
MASK_THRESHOLD = 0.5


@dataclass
class InteractivePrediction:
    """The outputs of one prediction: the mask at image size and the (256, 256) grid maps.

    Every grid map is (256, 256) float32 NumPy. One name per quantity: ``map_`` is the MAP
    estimate (the trained head), ``predictive_`` the posterior predictive.

    Attributes
    ----------
    base_logits
        The base segmenter's logits (float32, before the float16 rounding of the head input).
    map_logits, map_probability
        The head's MAP logits and ``sigmoid(map_logits)``.
    logit_variance
        Posterior variance of the head's logit (squared log-odds).
    predictive_probability
        ``E[sigmoid(z)]`` under the posterior: the calibrated probability (quadrature, or the
        mean over weight samples).
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
    low_res_logits
        SAM only (else None): the kept branch's (1, h, w) low-resolution logits, SamPredictor's
        ``mask_input`` for the next prediction.
    timings_s
        Wall-clock seconds of the steps: ``decode`` (base segmenter), ``prompt_maps``,
        ``head`` (one head pass: MAP logits and variance), ``uncertainty``; of the whole batch
        for the results of :meth:`InteractivePredictor.predict_extended`.
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
    low_res_logits: np.ndarray | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    #: The (256, 256) grid fields, for :meth:`to_image`.
    GRID_FIELDS = (
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

    @cached_property
    def masks(self) -> np.ndarray:
        """(1, H, W) bool mask at image size, as SamPredictor's ``masks``: the predictive
        probability resized to the image (:meth:`to_image`) above :data:`MASK_THRESHOLD`."""
        return (self.to_image("predictive_probability") > MASK_THRESHOLD)[None]

    def clicked_cells(self) -> set[tuple[int, int]]:
        """The grid cells ``(row, col)`` of the clicks."""
        rows, cols = image_to_grid(self.points_xy[:, 0], self.points_xy[:, 1], self.image_hw)
        return {(int(r), int(c)) for r, c in zip(np.atleast_1d(rows), np.atleast_1d(cols))}

    def to_image(self, name: str) -> np.ndarray:
        """The grid field ``name`` resized to the image, (H, W) float32.

        Bilinear interpolation with pixel centres aligned (``align_corners=False``) and
        anti-aliasing when shrinking, the resize SAM's logits go through
        (:mod:`laplace_head.segmenters.sam`); every field is resized as it is (probabilities
        stay in [0, 1], logits are interpolated as logits). The anti-aliasing filter can
        overshoot by a float32 rounding step, so probabilities are clamped to [0, 1] and
        variances, entropies and BALD at 0.
        """
        if name not in self.GRID_FIELDS:
            raise ValueError(f"unknown field {name!r}; valid: {', '.join(self.GRID_FIELDS)}")
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


def _default_suggest_policy() -> str:
    """The schema's default of ``active_prompting.suggest_policy``."""
    from laplace_head.config.loader import fill_defaults, load_schema

    return fill_defaults({}, load_schema())["active_prompting"]["suggest_policy"]


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


def _check_prompt_kinds(point_coords: Any, point_labels: Any, box: Any, multimask: bool) -> None:
    if box is not None:
        raise ValueError(
            "box prompts are not supported: the head was trained on click prompts only; pass "
            "point_coords and point_labels"
        )
    if multimask:
        raise ValueError(
            "multimask_output=True is not supported: the head refines one mask (the base "
            "segmenter's highest-scoring branch); call predict with multimask_output=False"
        )
    if point_coords is None or point_labels is None:
        raise ValueError(
            "predict needs point_coords ((N, 2) (x, y) image pixels) and point_labels ((N,) "
            "1 = positive, 0 = negative), N >= 1"
        )


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
    sam_mask_input
        Feed SAM its previous low-resolution logits as ``mask_input`` (the RITM protocol):
        :class:`~laplace_head.interactive.session.ClickSession` and :meth:`lookahead` pass a
        prediction's ``low_res_logits`` with the next click
        (``active_prompting.sam_mask_input``; SAM only, default off as stage 3 decodes without).
    suggest_policy
        The click rule :meth:`suggest` uses when given none
        (``active_prompting.suggest_policy``; None: that key's schema default).
    policy_settings
        The click rules' tunable constants, :attr:`ClickState.settings
        <laplace_head.interactive.clicks.ClickState.settings>` of :meth:`click_state`
        (``active_prompting.region_error_level`` etc.; None: the schema's defaults).
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
        sam_mask_input: bool = False,
        suggest_policy: str | None = None,
        policy_settings: PolicySettings | None = None,
    ) -> None:
        if uncertainty not in UNCERTAINTY_MODES:
            raise ValueError(
                f"uncertainty = {uncertainty!r} is not one of {', '.join(UNCERTAINTY_MODES)}"
            )
        if not prompt_sigma > 0:
            raise ValueError(f"prompt_sigma must be > 0; got {prompt_sigma}")
        if sam_mask_input and not segmenter.supports_mask_input:
            raise ValueError(
                f"sam_mask_input (active_prompting.sam_mask_input) feeds SAM its previous "
                f"low-resolution logits; the {segmenter.name} base segmenter takes no mask "
                "input. Set it to false, or use sam.backend: sam."
            )
        self.segmenter = segmenter
        self.posterior = posterior
        self.prompt_sigma = float(prompt_sigma)
        self.uncertainty = uncertainty
        self.n_nodes = int(n_nodes)
        self.seed = int(seed)
        self.sam_mask_input = bool(sam_mask_input)
        if suggest_policy is None:
            suggest_policy = _default_suggest_policy()
        if suggest_policy not in POLICIES or suggest_policy in GROUND_TRUTH_POLICIES:
            raise ValueError(
                f"suggest_policy (active_prompting.suggest_policy) = {suggest_policy!r} is not "
                "a click rule that suggests; pick one of "
                f"{', '.join(sorted(set(POLICIES) - GROUND_TRUTH_POLICIES))}"
            )
        self.suggest_policy = suggest_policy
        self.policy_settings = PolicySettings() if policy_settings is None else policy_settings
        self._weight_samples: torch.Tensor | None = None
        if uncertainty == "samples":
            generator = torch.Generator(device=posterior.device).manual_seed(
                derive_seed(seed, "interactive_weights")
            )
            self._weight_samples = posterior.sample_weights(n_samples, generator)
        self._image_digest: str | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Mapping[str, Any],
        laplace_dir: str | os.PathLike,
        device: str = "cpu",
        **kwargs: Any,
    ) -> InteractivePredictor:
        """Build the segmenter and load the posterior from stage 8's settings.

        Parameters
        ----------
        settings
            Stage 8's settings, ``laplace_head.settings.stage_params(config)
            ["active_prompting"]``: ``segmenter`` (keyword arguments of
            :func:`~laplace_head.segmenters.build_segmenter_from_settings`; a SAM backend
            without ``device`` gets ``device``), ``prompt_sigma``, ``sam_mask_input``,
            ``suggest_policy`` and ``policy_settings`` (:class:`~laplace_head.interactive
            .clicks.PolicySettings` keywords; optional).
        laplace_dir
            The fitted Laplace run (anything :func:`load_posterior` accepts).
        device
            auto | cuda | cpu, for the head (and SAM when the settings name no device).
        **kwargs
            Passed to the constructor (``uncertainty``, ``n_samples``, ``seed``, ``n_nodes``).
        """
        segmenter_settings = dict(settings["segmenter"])
        if segmenter_settings.get("backend") == "sam":
            segmenter_settings.setdefault("device", device)
        segmenter = build_segmenter_from_settings(**segmenter_settings)
        posterior = load_posterior(laplace_dir, device=resolve_device(device, "device"))
        kwargs.setdefault("sam_mask_input", settings["sam_mask_input"])
        kwargs.setdefault("suggest_policy", settings["suggest_policy"])
        if settings.get("policy_settings") is not None:
            kwargs.setdefault("policy_settings", PolicySettings(**settings["policy_settings"]))
        return cls(segmenter, posterior, settings["prompt_sigma"], **kwargs)

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        laplace_dir: str | os.PathLike,
        device: str | None = None,
        **kwargs: Any,
    ) -> InteractivePredictor:
        """:meth:`from_settings` with the settings of a resolved config
        (:func:`laplace_head.config.loader.load_config`); ``device`` defaults to
        ``sam.device``."""
        from laplace_head.settings import stage_params

        settings = stage_params(config)["active_prompting"]
        device = config["sam"]["device"] if device is None else device
        return cls.from_settings(settings, laplace_dir, device, **kwargs)

    # --- image --------------------------------------------------------------------------------

    def set_image(self, image_rgb: np.ndarray) -> None:
        """Do the per-image work for an (H, W, 3) uint8 RGB image.

        Setting the image that is already set (same pixels) does nothing: the segmenter's
        per-image work (SAM's encoder) is not repeated.
        """
        digest = _image_digest(np.asarray(image_rgb))
        if digest != self._image_digest or not _has_image(self.segmenter):
            self._image_digest = None
            self.segmenter.set_image(image_rgb)
            self._image_digest = digest

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the current image; RuntimeError before :meth:`set_image`."""
        if self._image_digest is None:
            raise RuntimeError("An image must be set with .set_image(...) before prediction.")
        return self.segmenter.image_hw

    # --- prediction ---------------------------------------------------------------------------

    def predict(
        self,
        point_coords: Any = None,
        point_labels: Any = None,
        box: Any = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = False,
    ) -> InteractivePrediction:
        """Base segmenter + head on one click set (see the module docstring's protocol).

        Parameters
        ----------
        point_coords
            (N, 2) ``(x, y)`` in original-image pixels, N >= 1.
        point_labels
            (N,) 1 = positive, 0 = negative.
        box
            Not supported (ValueError): the head was trained on clicks.
        mask_input
            SAM only: (1, h, w) low-resolution logits of a previous prediction
            (:attr:`InteractivePrediction.low_res_logits`), as SamPredictor's.
        multimask_output
            Only False: the head refines one mask.

        Raises
        ------
        RuntimeError
            Before :meth:`set_image`.
        ValueError
            For a box, multimask output, no points, mismatched lengths, labels other than 0/1,
            or a ``mask_input`` the base segmenter cannot take.
        """
        _check_prompt_kinds(point_coords, point_labels, box, multimask_output)
        image_hw = self.image_hw
        points = np.asarray(point_coords, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(point_labels).reshape(-1).astype(np.int64)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        low_res = None
        if self.segmenter.supports_mask_input or mask_input is not None:
            decoded, low_res = self.segmenter.predict_with_mask(points, labels, mask_input)
        else:
            decoded = self.segmenter.predict(points, labels)
        timings["decode"] = time.perf_counter() - start

        start = time.perf_counter()
        maps = prompt_maps(points, labels, image_hw, self.prompt_sigma)
        timings["prompt_maps"] = time.perf_counter() - start
        [prediction] = self._refine([(points, labels)], [decoded], [maps], timings)
        prediction.low_res_logits = low_res
        return prediction

    def _refine(
        self,
        click_sets: list[tuple[np.ndarray, np.ndarray]],
        decoded: list[tuple[np.ndarray, int, list[float]]],
        maps: list[tuple[np.ndarray, np.ndarray]],
        timings: dict[str, float],
    ) -> list[InteractivePrediction]:
        """Steps 3-4 of the protocol for B click sets of the current image in one batch: their
        base segmenter outputs and prompt maps -> one head pass and one uncertainty pass.
        ``timings`` (with the batch's ``decode`` and ``prompt_maps``) gets the batch's other
        steps and is copied into every prediction."""
        start = time.perf_counter()
        logits = [np.asarray(d[0], dtype=np.float32) for d in decoded]
        inputs = assemble_inputs(
            np.stack([stored_logits(plane) for plane in logits]),
            np.stack([pos_map for pos_map, _ in maps]),
            np.stack([neg_map for _, neg_map in maps]),
            self.posterior.logit_clip,
        )
        timings["prompt_maps"] += time.perf_counter() - start

        start = time.perf_counter()
        moments = self.posterior.logit_moments(inputs)
        timings["head"] = time.perf_counter() - start

        start = time.perf_counter()
        # Image by image from the batch's moments: the quadrature of a whole batch at once has
        # temporaries that outgrow the CPU caches (about 2x slower for 6 look-ahead candidates).
        per_image = [
            self.posterior.uncertainty_maps(
                inputs[i : i + 1],
                weight_samples=self._weight_samples,
                n_nodes=self.n_nodes,
                moments=(moments[0][i : i + 1], moments[1][i : i + 1]),
            )
            for i in range(len(inputs))
        ]
        timings["uncertainty"] = time.perf_counter() - start
        grid = {
            name: np.concatenate([maps[name].detach().float().cpu().numpy() for maps in per_image])
            for name in per_image[0]
        }
        image_hw = self.image_hw
        return [
            InteractivePrediction(
                base_logits=logits[i],
                **{name: grid[name][i] for name in InteractivePrediction.GRID_FIELDS[1:]},
                points_xy=points,
                labels=labels,
                image_hw=image_hw,
                branch_index=int(decoded[i][1]),
                scores=[float(s) for s in decoded[i][2]],
                uncertainty=self.uncertainty,
                timings_s=dict(timings),
            )
            for i, (points, labels) in enumerate(click_sets)
        ]

    def next_mask_input(self, prediction: InteractivePrediction) -> np.ndarray | None:
        """The ``mask_input`` of the prediction after ``prediction``: its low-resolution logits
        with ``sam_mask_input``, else None."""
        return prediction.low_res_logits if self.sam_mask_input else None

    # --- suggestions --------------------------------------------------------------------------

    def lookahead(self, prediction: InteractivePrediction) -> Lookahead:
        """The look-ahead of ``prediction`` for :attr:`ClickState.lookahead
        <laplace_head.interactive.clicks.ClickState.lookahead>`.

        ``lookahead([((row, col), label), ...], field)`` gives, per request, the (256, 256)
        grid map ``field`` (one of :attr:`InteractivePrediction.GRID_FIELDS`; default the
        predictive probability) of :meth:`predict` on ``prediction``'s clicks plus one click
        with ``label`` at the cell's centre
        (:func:`~laplace_head.interactive.clicks.grid_to_image`), fed :meth:`next_mask_input`.
        The requests not asked before are predicted together (:meth:`predict_extended`);
        results are cached per (cell, label), every field at once, so asking for another
        field of the same requests predicts nothing. ``prediction`` must be of the current
        image.
        """
        points = np.asarray(prediction.points_xy, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(prediction.labels, dtype=np.int64).reshape(-1)
        mask_input = self.next_mask_input(prediction)
        cache: dict[tuple[Cell, int], InteractivePrediction] = {}

        def predict_with(
            requests: Sequence[tuple[Cell, int]], field: str = PREDICTIVE_FIELD
        ) -> list[np.ndarray]:
            if field not in InteractivePrediction.GRID_FIELDS:
                raise ValueError(
                    f"unknown look-ahead field {field!r}; valid: "
                    f"{', '.join(InteractivePrediction.GRID_FIELDS)}"
                )
            keys = [((int(cell[0]), int(cell[1])), int(label)) for cell, label in requests]
            todo = list(dict.fromkeys(key for key in keys if key not in cache))
            if todo:
                extended = self.predict_extended(points, labels, todo, mask_input)
                cache.update(zip(todo, extended))
            return [getattr(cache[key], field) for key in keys]

        return predict_with

    def predict_extended(
        self,
        point_coords: Any,
        point_labels: Any,
        extra: Sequence[tuple[Cell, int]],
        mask_input: np.ndarray | None = None,
    ) -> list[InteractivePrediction]:
        """:meth:`predict` of the clicks plus one click per item of ``extra``, in one batch.

        Item ``((row, col), label)`` adds a click with ``label`` at the centre of grid cell
        ``(row, col)`` (:func:`~laplace_head.interactive.clicks.grid_to_image`) after the
        given clicks. The base segmenter decodes the extended click sets with one
        ``predict_batch`` (SAM: one prompt-encoder + mask-decoder call, as all sets have the
        same number of points; random_walker: one decode per set), every set fed
        ``mask_input``; the prompt maps of the given clicks are drawn once and only the map
        of each extra click's label is redrawn (the same float16 maps as :func:`prompt_maps`
        of the extended set); the head runs once on the whole batch, the quadrature image by
        image. Each
        result equals :meth:`predict` of its extended set to float rounding (exactly where
        the segmenter and the head compute one set at a time); ``low_res_logits`` is None.
        """
        image_hw = self.image_hw
        points = np.asarray(point_coords, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(point_labels).reshape(-1).astype(np.int64)
        if not extra:
            return []
        timings: dict[str, float] = {}
        click_sets = []
        for (row, col), label in extra:
            x, y = grid_to_image(int(row), int(col), image_hw)
            click_sets.append((np.vstack([points, [[x, y]]]), np.append(labels, int(label))))
        start = time.perf_counter()
        decoded = self.segmenter.predict_batch(click_sets, mask_input=mask_input)
        timings["decode"] = time.perf_counter() - start

        start = time.perf_counter()
        given = prompt_maps(points, labels, image_hw, self.prompt_sigma)
        maps = []
        for extended_points, extended_labels in click_sets:
            label = int(extended_labels[-1])
            redrawn = stage3_prompt_maps(
                extended_points[extended_labels == label],
                np.empty((0, 2)),
                image_hw,
                self.prompt_sigma,
            )[0]
            maps.append((redrawn, given[1]) if label == 1 else (given[0], redrawn))
        timings["prompt_maps"] = time.perf_counter() - start
        return self._refine(click_sets, decoded, maps, timings)

    def click_state(self, prediction: InteractivePrediction) -> ClickState:
        """What a click policy sees after ``prediction``: its maps, its clicked cells and its
        :meth:`lookahead` (no ground truth)."""
        lookahead = self.lookahead(prediction)
        return ClickState(
            map_probability=prediction.map_probability,
            entropy=prediction.entropy,
            bald=prediction.bald,
            clicked=prediction.clicked_cells(),
            predictive_probability=prediction.predictive_probability,
            lookahead=lookahead,
            lookahead_fields=lookahead,
            settings=self.policy_settings,
        )

    def suggest(
        self,
        prediction: InteractivePrediction,
        k: int = 1,
        policy: str | None = None,
        seed: int = 0,
        min_distance: float | None = None,
    ) -> list[Suggestion]:
        """The next ``k`` clicks a policy proposes after ``prediction``, best first.

        Parameters
        ----------
        prediction
            The prediction to suggest from (of the current image); its clicked cells are never
            suggested.
        k
            Number of suggestions (fewer when the policy runs out of cells).
        policy
            A name in :data:`~laplace_head.interactive.clicks.POLICIES` other than the
            ground-truth ``oracle``: ``bald``, ``bald_raw``, ``bald_region``,
            ``bald_lookahead``, ``entropy``, ``map_margin``, ``random``; None (default): the
            predictor's ``suggest_policy``. ``bald_lookahead`` re-predicts (:meth:`lookahead`,
            2 predictions per candidate, in one batch).
        seed
            Seeds the ``random`` policy (with the number of clicks and the suggestion index).
        min_distance
            Suggestions after the first keep at least this distance (grid pixels) from the
            earlier ones, so they point at different regions; default ``2 * prompt_sigma``,
            0 turns it off.

        Returns
        -------
        list of Suggestion
            In image pixels, each with the label it most likely gets
            (:func:`~laplace_head.interactive.clicks.suggest`).
        """
        policy = self.suggest_policy if policy is None else policy
        distance = 2.0 * self.prompt_sigma if min_distance is None else float(min_distance)
        state = self.click_state(prediction)
        stream = (len(prediction.labels),)
        return suggest(state, policy, k, distance, prediction.image_hw, seed, stream)


def suggest_for_inputs(
    posterior: Posterior,
    inputs: Any,
    k: int = 5,
    policy: str = "bald_region",
    min_distance: float | None = None,
    prompt_sigma: float = 8.0,
) -> tuple[list[Suggestion], dict[str, np.ndarray]]:
    """Suggested next clicks for one head input, e.g. a stage-3 prompt set.

    Parameters
    ----------
    posterior
        The fitted head.
    inputs
        One (3, H, W) or (1, 3, H, W) input ``[logits_256, pos_map, neg_map]``
        (:func:`~laplace_head.bayes.posterior.stack_inputs`). Its given clicks - the cells where
        a prompt map exceeds 0.5 - are never suggested.
    k, policy
        As :meth:`InteractivePredictor.suggest` (a policy without look-ahead: there is no base
        segmenter to re-decode with).
    min_distance
        Grid pixels between suggestions; default ``2 * prompt_sigma``.

    Returns
    -------
    tuple
        The suggestions, ``(x, y)`` in pixels of the H x W input grid, and the maps they were
        chosen from (:meth:`Posterior.uncertainty_maps
        <laplace_head.bayes.posterior.Posterior.uncertainty_maps>`, (H, W) NumPy, quadrature).
    """
    tensor = posterior.as_inputs(inputs)
    if tensor.shape[0] != 1:
        raise UncertaintyInputError(
            f"suggest_for_inputs takes one prompt set, (3, H, W); got a batch of {tensor.shape[0]}"
        )
    maps = {
        name: value[0].detach().float().cpu().numpy()
        for name, value in posterior.uncertainty_maps(tensor).items()
    }
    pos_map, neg_map = tensor[0, 1].cpu().numpy(), tensor[0, 2].cpu().numpy()
    state = ClickState(
        map_probability=maps["map_probability"],
        entropy=maps["entropy"],
        bald=maps["bald"],
        excluded=(pos_map > 0.5) | (neg_map > 0.5),
        predictive_probability=maps["predictive_probability"],
    )
    distance = 2.0 * prompt_sigma if min_distance is None else float(min_distance)
    return suggest(state, policy, k, distance, state.shape), maps
