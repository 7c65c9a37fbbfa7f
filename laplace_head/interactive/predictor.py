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
   prompts read back from the stage-3 cache. A posterior of the image head
   (:attr:`Posterior.head_variant <laplace_head.bayes.posterior.Posterior.head_variant>`) also
   gets the image at the 256 grid, resized once in :meth:`InteractivePredictor.set_image` by
   the rule stage 4.5 packs it with (:func:`~laplace_head.dataset.images.resize_image_grid`).
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

import copy
import functools
import hashlib
import inspect
import math
import numbers
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from laplace_head.bayes.posterior import HeadPass, Posterior, load_posterior
from laplace_head.bayes.predictive import (
    MAX_QUADRATURE_NODES,
    QUADRATURE_NODES,
    UncertaintyInputError,
)
from laplace_head.cache.promptset_format import check_logits, stored_logits
from laplace_head.cache.promptset_format import prompt_maps as stage3_prompt_maps
from laplace_head.cache.split_h5 import assemble_inputs
from laplace_head.dataset.images import resize_image_grid
from laplace_head.interactive.clicks import (
    GROUND_TRUTH_POLICIES,
    POLICIES,
    PREDICTIVE_FIELD,
    Cell,
    ClickState,
    Lookahead,
    PolicySettings,
    Suggestion,
    check_suggest_arguments,
    grid_to_image,
    image_to_grid,
    suggest,
    suggesting_policies,
)
from laplace_head.segmenters import BaseSegmenter, build_segmenter_from_settings
from laplace_head.segmenters.base import check_clicks, check_labels
from laplace_head.settings import (
    GRID_SIZE,
    check_segmenter_fingerprint,
    segmenter_fingerprint,
)
from laplace_head.util.devices import resolve_device
from laplace_head.util.seeding import derive_seed
from laplace_head.util.values import is_int, short_repr

UNCERTAINTY_MODES = ("quadrature", "samples")
#: The mask threshold on the predictive probability (:attr:`InteractivePrediction.masks`).
MASK_THRESHOLD = 0.5
#: Predictions kept per image, by click set, for a click set decoded again without a mask
#: input: the first click every stage-8 rule starts with, the look-ahead candidate that is
#: then clicked, an undo and redo. About 3 MB each once their posterior maps are read.
PREDICTION_MEMO_SIZE = 16


@dataclass
class InteractivePrediction:
    """The outputs of one prediction: the mask at image size and the (256, 256) grid maps.

    Every grid map is (256, 256) float32 NumPy. One name per quantity: ``map_`` is the MAP
    estimate (the trained head), ``predictive_`` the posterior predictive. The posterior maps
    (:attr:`POSTERIOR_FIELDS`: the logit variance and what follows from it) are computed on
    first use, so a caller that reads only the MAP maps (e.g. a ground-truth or random click
    rule) does not pay for the GLM variance; their values do not depend on when.

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
        ``head`` (the head's MAP pass, plus its GLM variance once the posterior maps are
        read), ``uncertainty`` (once they are read); of the whole batch for the results of
        :meth:`InteractivePredictor.predict_extended`.
    posterior_maps
        Computes the :attr:`POSTERIOR_FIELDS` (called once, on first use; then released).
    image_digest
        Digest of the image the prediction was made on; :meth:`InteractivePredictor.suggest`
        and the other methods that take a prediction refuse one of another image.
    """

    base_logits: np.ndarray
    map_logits: np.ndarray
    map_probability: np.ndarray
    points_xy: np.ndarray
    labels: np.ndarray
    image_hw: tuple[int, int]
    branch_index: int
    scores: list[float]
    uncertainty: str
    posterior_maps: Callable[[], Mapping[str, np.ndarray]] | None = field(
        default=None, repr=False, compare=False
    )
    low_res_logits: np.ndarray | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    image_digest: str | None = None

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
    #: The grid fields that need the posterior (computed on first use).
    POSTERIOR_FIELDS = GRID_FIELDS[3:]
    PROBABILITY_FIELDS = ("map_probability", "predictive_probability")
    NONNEGATIVE_FIELDS = ("logit_variance", "entropy", "expected_entropy", "bald")

    @cached_property
    def _posterior(self) -> Mapping[str, np.ndarray]:
        if self.posterior_maps is None:
            raise RuntimeError("this prediction was made without its posterior maps")
        maps, self.posterior_maps = self.posterior_maps(), None
        return maps

    @property
    def logit_variance(self) -> np.ndarray:
        """Posterior variance of the head's logit (squared log-odds)."""
        return self._posterior["logit_variance"]

    @property
    def predictive_probability(self) -> np.ndarray:
        """``E[sigmoid(z)]`` under the posterior: the calibrated probability."""
        return self._posterior["predictive_probability"]

    @property
    def entropy(self) -> np.ndarray:
        """Predictive entropy ``H(E[p])`` (nats)."""
        return self._posterior["entropy"]

    @property
    def expected_entropy(self) -> np.ndarray:
        """Expected entropy ``E[H(p)]`` (nats)."""
        return self._posterior["expected_entropy"]

    @property
    def bald(self) -> np.ndarray:
        """BALD, the mutual information ``H(E[p]) - E[H(p)]`` (nats)."""
        return self._posterior["bald"]

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


@cache
def _schema_bounds(section: str, key: str) -> tuple[float | None, float | None, bool]:
    """``(low, high, low_exclusive)`` of the config schema's number ``section.key``."""
    from laplace_head.config.loader import load_schema

    spec = load_schema()["properties"][section]["properties"][key]
    if "exclusiveMinimum" in spec:
        return spec["exclusiveMinimum"], spec.get("maximum"), True
    return spec.get("minimum"), spec.get("maximum"), False


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool | np.bool_)


def check_prompt_sigma(prompt_sigma: Any, name: str = "prompt_sigma") -> float:
    """``prompt_sigma`` as a float, refused (ValueError) outside the range the config schema
    gives ``prompt_generation.gaussian_sigma`` (the value the head was trained with)."""
    low, high, exclusive = _schema_bounds("prompt_generation", "gaussian_sigma")
    ok = (
        isinstance(prompt_sigma, numbers.Real)
        and not _is_bool(prompt_sigma)
        and math.isfinite(prompt_sigma)
        and (prompt_sigma > low if exclusive else prompt_sigma >= low)
        and prompt_sigma <= high
    )
    if not ok:
        opening = "(" if exclusive else "["
        raise ValueError(
            f"{name} (prompt_generation.gaussian_sigma, grid pixels) must be a finite number in "
            f"{opening}{low}, {high}]; got {prompt_sigma!r}"
        )
    return float(prompt_sigma)


def _n_samples_range() -> tuple[int, int]:
    """The range of posterior weight samples: the schema's ``laplace.n_posterior_samples``
    (stage 7's samples of the same posterior)."""
    low, high, _ = _schema_bounds("laplace", "n_posterior_samples")
    return int(low), int(high)


def _check_int_in(name: str, value: Any, low: int, high: int, meaning: str = "") -> int:
    if not is_int(value) or not low <= value <= high:
        raise ValueError(f"{name}{meaning} must be an int in [{low}, {high}]; got {value!r}")
    return int(value)


def _image_digest(image_rgb: np.ndarray) -> str:
    array = np.ascontiguousarray(image_rgb)
    digest = hashlib.blake2b(array.tobytes(), digest_size=16)
    digest.update(repr((array.shape, array.dtype.str)).encode())
    return digest.hexdigest()


def _memo_key(points: np.ndarray, labels: np.ndarray) -> tuple[bytes, bytes]:
    """A click set's key in the predictor's prediction memo: its exact coordinates and labels."""
    return (
        np.ascontiguousarray(points, dtype=np.float64).tobytes(),
        np.ascontiguousarray(labels, dtype=np.int64).tobytes(),
    )


def _has_image(segmenter: BaseSegmenter) -> bool:
    try:
        return len(segmenter.image_hw) == 2
    except RuntimeError:
        return False


#: The argument names of the clicks in messages (SamPredictor's).
_CLICK_NAMES = ("point_coords", "point_labels")


def _check_decoded(decoded: Sequence[tuple[np.ndarray, int, list[float]]]) -> None:
    """Refuse non-finite or mis-shaped base logits, as stage 3 does
    (:func:`~laplace_head.cache.promptset_format.check_logits`): the head's input step would
    otherwise map them into range and hide them."""
    for logits, _, _ in decoded:
        check_logits(logits)


def _check_extra(extra: Any, name: str = "extra") -> list[tuple[Cell, int]]:
    """``[((row, col), label), ...]`` with int cells on the 256 grid and labels exactly 0/1,
    as plain ints; ValueError naming the bad item otherwise."""
    if isinstance(extra, str | bytes | np.ndarray) or not isinstance(extra, Sequence):
        raise ValueError(
            f"{name} must be a sequence of ((row, col), label) items; got {short_repr(extra, 80)}"
        )
    checked = []
    for index, item in enumerate(extra):
        try:
            cell, label = item
            row, col = cell
        except (TypeError, ValueError):
            raise ValueError(
                f"{name}[{index}] must be ((row, col), label); got {short_repr(item, 80)}"
            ) from None
        if not (is_int(row) and is_int(col) and 0 <= row < GRID_SIZE and 0 <= col < GRID_SIZE):
            raise ValueError(
                f"{name}[{index}] cell (row, col) = {short_repr(cell, 80)} must be ints in "
                f"[0, {GRID_SIZE}) (a cell of the {GRID_SIZE} x {GRID_SIZE} grid)"
            )
        [label] = check_labels([label], 1, f"{name}[{index}] label")
        checked.append(((int(row), int(col)), int(label)))
    return checked


def _check_prompt_kinds(point_coords: Any, point_labels: Any, box: Any, multimask: bool) -> None:
    if not _is_bool(multimask):
        raise ValueError(
            f"multimask_output must be a bool (only False is supported); got {multimask!r}"
        )
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


def _check_segmenter_settings(
    posterior: Posterior,
    segmenter_settings: Mapping[str, Any],
    prompt_sigma: float,
    source: str,
    allow_mismatch: bool,
) -> None:
    """Compare the fingerprint of ``segmenter_settings`` (a key they omit counts with
    :func:`~laplace_head.segmenters.build_segmenter_from_settings`'s default) and
    ``prompt_sigma`` with the one ``posterior`` records
    (:func:`~laplace_head.settings.check_segmenter_fingerprint`)."""
    builder_defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(build_segmenter_from_settings).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    given = segmenter_fingerprint({**builder_defaults, **segmenter_settings}, prompt_sigma)
    recorded = posterior.meta.get("segmenter_fingerprint")
    check_segmenter_fingerprint(recorded, given, source, allow_mismatch)


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
        Std of the prompt maps' Gaussians in grid pixels (``prompt_generation.gaussian_sigma``,
        within that key's schema range, (0, 256]).
    uncertainty
        ``quadrature`` (default: closed-form moments + quadrature, deterministic) or
        ``samples`` (``n_samples`` posterior weight draws, seeded by ``seed``; ``n_samples``
        within the schema range of ``laplace.n_posterior_samples``, [2, 1024]).
    n_nodes
        Quadrature nodes per pixel, an int in [2, 64]
        (:data:`~laplace_head.bayes.predictive.MAX_QUADRATURE_NODES`).
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
        (``active_prompting.region_error_level`` etc.), or a mapping of its fields; None: the
        schema's defaults.

    Every public method refuses what it cannot honour with a ValueError (TypeError for an
    object of the wrong kind) naming the argument, the value and what is accepted: clicks by
    :func:`~laplace_head.segmenters.base.check_clicks`, images by the segmenter's
    :meth:`~laplace_head.segmenters.base.BaseSegmenter.check_image`, suggestion arguments by
    :func:`~laplace_head.interactive.clicks.check_suggest_arguments`, and a prediction of
    another image (or not an :class:`InteractivePrediction`) wherever one is passed back.
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
        policy_settings: PolicySettings | Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(segmenter, BaseSegmenter):
            raise TypeError(
                f"segmenter must be a BaseSegmenter (laplace_head.segmenters.build_segmenter); "
                f"got {type(segmenter).__name__}"
            )
        if not isinstance(posterior, Posterior):
            raise TypeError(
                f"posterior must be a Posterior (laplace_head.bayes.posterior.load_posterior); "
                f"got {type(posterior).__name__}"
            )
        if not isinstance(uncertainty, str) or uncertainty not in UNCERTAINTY_MODES:
            raise ValueError(
                f"uncertainty = {uncertainty!r} is not one of {', '.join(UNCERTAINTY_MODES)}"
            )
        prompt_sigma = check_prompt_sigma(prompt_sigma)
        _check_int_in("n_nodes", n_nodes, 2, MAX_QUADRATURE_NODES, " (quadrature nodes)")
        _check_int_in("n_samples", n_samples, *_n_samples_range(), " (posterior weight samples)")
        if not is_int(seed):
            raise ValueError(f"seed must be an int; got {seed!r}")
        if not _is_bool(sam_mask_input):
            raise ValueError(f"sam_mask_input must be a bool; got {sam_mask_input!r}")
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
        if (
            not isinstance(suggest_policy, str)
            or suggest_policy not in POLICIES
            or suggest_policy in GROUND_TRUTH_POLICIES
        ):
            raise ValueError(
                f"suggest_policy (active_prompting.suggest_policy) = {suggest_policy!r} is not "
                f"a click rule that suggests; pick one of {', '.join(suggesting_policies())}"
            )
        self.suggest_policy = suggest_policy
        self.policy_settings = PolicySettings.of(policy_settings)
        self._weight_samples: torch.Tensor | None = None
        if uncertainty == "samples":
            generator = torch.Generator(device=posterior.device).manual_seed(
                derive_seed(seed, "interactive_weights")
            )
            self._weight_samples = posterior.sample_weights(n_samples, generator)
        self._image_digest: str | None = None
        self._image_256: np.ndarray | None = None  # (3, 256, 256) uint8, image heads only
        self._memo: OrderedDict[tuple[bytes, bytes], InteractivePrediction] = OrderedDict()

    @classmethod
    def from_settings(
        cls,
        settings: Mapping[str, Any],
        laplace_dir: str | os.PathLike,
        device: str = "cpu",
        allow_segmenter_mismatch: bool = False,
        **kwargs: Any,
    ) -> InteractivePredictor:
        """Build the segmenter and load the posterior from stage 8's settings.

        The segmenter settings and ``prompt_sigma`` must be those the posterior's head was
        trained on: their :func:`~laplace_head.settings.segmenter_fingerprint` is compared with
        the one the posterior records, before the segmenter is built.

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
        allow_segmenter_mismatch
            Proceed with a :class:`~laplace_head.settings.SegmenterMismatchWarning` when the
            fingerprints differ. A posterior that records no fingerprint always proceeds
            with that warning.
        **kwargs
            Passed to the constructor (``uncertainty``, ``n_samples``, ``seed``, ``n_nodes``).

        Raises
        ------
        SegmenterMismatchError
            The fingerprints differ (the message names each key, recorded vs given) and
            ``allow_segmenter_mismatch`` is false.
        """
        segmenter_settings = dict(settings["segmenter"])
        posterior = load_posterior(laplace_dir, device=resolve_device(device, "device"))
        _check_segmenter_settings(
            posterior,
            segmenter_settings,
            settings["prompt_sigma"],
            f"the posterior in {laplace_dir}",
            allow_segmenter_mismatch,
        )
        if segmenter_settings.get("backend") == "sam":
            segmenter_settings.setdefault("device", device)
        segmenter = build_segmenter_from_settings(**segmenter_settings)
        kwargs.setdefault("sam_mask_input", settings["sam_mask_input"])
        kwargs.setdefault("suggest_policy", settings["suggest_policy"])
        kwargs.setdefault("policy_settings", settings.get("policy_settings"))  # __init__: .of
        return cls(segmenter, posterior, settings["prompt_sigma"], **kwargs)

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        laplace_dir: str | os.PathLike,
        device: str | None = None,
        allow_segmenter_mismatch: bool = False,
        **kwargs: Any,
    ) -> InteractivePredictor:
        """:meth:`from_settings` with the settings of a resolved config
        (:func:`laplace_head.config.loader.load_config`); ``device`` defaults to
        ``sam.device``. A config whose ``sam`` settings or ``prompt_generation.gaussian_sigma``
        differ from the training run's is refused unless ``allow_segmenter_mismatch``."""
        from laplace_head.settings import stage_params

        settings = stage_params(config)["active_prompting"]
        device = config["sam"]["device"] if device is None else device
        return cls.from_settings(settings, laplace_dir, device, allow_segmenter_mismatch, **kwargs)

    # --- image --------------------------------------------------------------------------------

    def with_segmenter(self, segmenter: BaseSegmenter) -> InteractivePredictor:
        """A predictor with this one's posterior and settings (its weight draws and click-rule
        settings included) on another instance of the same base segmenter, with no image set:
        e.g. one per image, each keeping its own per-image work (SAM: the embedding)."""
        if type(segmenter) is not type(self.segmenter):
            raise TypeError(
                f"with_segmenter needs a {type(self.segmenter).__name__}; got "
                f"{type(segmenter).__name__}"
            )
        other = copy.copy(self)
        other.segmenter = segmenter
        other._image_digest = None
        other._image_256 = None
        other._memo = OrderedDict()
        return other

    def set_image(self, image_rgb: np.ndarray) -> None:
        """Do the per-image work for an (H, W, 3) uint8 RGB image.

        Setting the image that is already set (same pixels) does nothing: the segmenter's
        per-image work (SAM's encoder) is not repeated. An image the segmenter refuses
        (ValueError naming its shape and dtype) also unsets the current one.
        """
        try:
            image_rgb = self.segmenter.check_image(image_rgb)
        except ValueError:
            self._image_digest = None
            raise
        digest = _image_digest(image_rgb)
        if digest != self._image_digest or not _has_image(self.segmenter):
            self._image_digest = None
            self._memo.clear()
            self.segmenter.set_image(image_rgb)
            if self.posterior.head_variant.needs_image:
                self._image_256 = resize_image_grid(image_rgb, GRID_SIZE)
            self._image_digest = digest

    @property
    def image_digest(self) -> str | None:
        """Digest of the current image's pixels, shape and dtype (None before
        :meth:`set_image`); each prediction records it (:attr:`InteractivePrediction
        .image_digest`)."""
        return self._image_digest

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
            For a box, multimask output (or a ``multimask_output`` that is not a bool), clicks
            :func:`~laplace_head.segmenters.base.check_clicks` refuses (no points, a shape other
            than (N, 2) / (N,), non-finite or off-image coordinates, labels other than exactly
            0/1), a ``mask_input`` the base segmenter cannot take, or non-finite base logits.
        """
        _check_prompt_kinds(point_coords, point_labels, box, multimask_output)
        image_hw = self.image_hw
        points, labels = check_clicks(point_coords, point_labels, image_hw, _CLICK_NAMES)
        key = _memo_key(points, labels)
        if mask_input is None and key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        timings: dict[str, float] = {}
        start = time.perf_counter()
        low_res = None
        if self.segmenter.supports_mask_input or mask_input is not None:
            decoded, low_res = self.segmenter.predict_with_mask(points, labels, mask_input)
        else:
            decoded = self.segmenter.predict(points, labels)
        _check_decoded([decoded])
        timings["decode"] = time.perf_counter() - start

        start = time.perf_counter()
        maps = prompt_maps(points, labels, image_hw, self.prompt_sigma)
        timings["prompt_maps"] = time.perf_counter() - start
        [prediction] = self._refine([(points, labels)], [decoded], [maps], timings)
        prediction.low_res_logits = low_res
        prediction.image_digest = self._image_digest
        if mask_input is None:
            self._remember(key, prediction)
        return prediction

    def _remember(self, key: tuple[bytes, bytes], prediction: InteractivePrediction) -> None:
        """Keep ``prediction`` of the click set ``key`` (made without a mask input) for a
        :meth:`predict` of the same set on this image (:data:`PREDICTION_MEMO_SIZE`)."""
        self._memo[key] = prediction
        self._memo.move_to_end(key)
        while len(self._memo) > PREDICTION_MEMO_SIZE:
            self._memo.popitem(last=False)

    def _refine(
        self,
        click_sets: list[tuple[np.ndarray, np.ndarray]],
        decoded: list[tuple[np.ndarray, int, list[float]]],
        maps: list[tuple[np.ndarray, np.ndarray]],
        timings: dict[str, float],
    ) -> list[InteractivePrediction]:
        """Steps 3-4 of the protocol for B click sets of the current image: their base
        segmenter outputs and prompt maps -> the head's MAP maps now, the posterior maps on
        first use (:meth:`_posterior_maps`), image by image. ``timings`` (with the batch's
        ``decode`` and ``prompt_maps``) gets the MAP pass and is copied into every
        prediction."""
        start = time.perf_counter()
        logits = [np.asarray(d[0], dtype=np.float32) for d in decoded]
        images = None
        if self.posterior.head_variant.needs_image:
            images = np.broadcast_to(self._image_256, (len(logits), *self._image_256.shape))
        inputs = assemble_inputs(
            np.stack([stored_logits(plane) for plane in logits]),
            np.stack([pos_map for pos_map, _ in maps]),
            np.stack([neg_map for _, neg_map in maps]),
            self.posterior.logit_clip,
            images,
        )
        timings["prompt_maps"] += time.perf_counter() - start

        start = time.perf_counter()
        # image by image, as logit_moments computes them: a batch's convolutions may round
        # differently, and the MAP maps of predict_extended equal predict's. Each pass is kept
        # for the posterior maps (a last-layer posterior's Jacobian is the pass's features).
        passes = [self.posterior.head_pass(inputs[i : i + 1]) for i in range(len(inputs))]
        map_logits = [head_pass.logits[0] for head_pass in passes]
        timings["head"] = time.perf_counter() - start
        image_hw = self.image_hw
        predictions = []
        for i, (points, labels) in enumerate(click_sets):
            prediction = InteractivePrediction(
                base_logits=logits[i],
                map_logits=map_logits[i].detach().float().cpu().numpy(),
                map_probability=torch.sigmoid(map_logits[i]).detach().float().cpu().numpy(),
                points_xy=points,
                labels=labels,
                image_hw=image_hw,
                branch_index=int(decoded[i][1]),
                scores=[float(s) for s in decoded[i][2]],
                uncertainty=self.uncertainty,
                timings_s=dict(timings),
            )
            prediction.posterior_maps = functools.partial(
                self._posterior_maps, passes[i], prediction.timings_s
            )
            predictions.append(prediction)
        return predictions

    def _posterior_maps(
        self, head_pass: HeadPass, timings: dict[str, float]
    ) -> dict[str, np.ndarray]:
        """The :attr:`InteractivePrediction.POSTERIOR_FIELDS` of one image's head pass: the
        GLM variance (from the pass), then the quadrature (or the weight samples); adds their
        seconds to ``timings``."""
        start = time.perf_counter()
        moments = self.posterior.logit_moments(head_pass)
        timings["head"] = timings.get("head", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        maps = self.posterior.uncertainty_maps(
            head_pass.inputs,
            weight_samples=self._weight_samples,
            n_nodes=self.n_nodes,
            moments=moments,
        )
        timings["uncertainty"] = time.perf_counter() - start
        return {
            name: maps[name][0].detach().float().cpu().numpy()
            for name in InteractivePrediction.POSTERIOR_FIELDS
        }

    def next_mask_input(self, prediction: InteractivePrediction) -> np.ndarray | None:
        """The ``mask_input`` of the prediction after ``prediction``: its low-resolution logits
        with ``sam_mask_input``, else None."""
        self._check_prediction(prediction)
        return prediction.low_res_logits if self.sam_mask_input else None

    def _check_prediction(self, prediction: Any, name: str = "prediction") -> None:
        """Refuse what is not an :class:`InteractivePrediction` of the current image."""
        if not isinstance(prediction, InteractivePrediction):
            raise TypeError(
                f"{name} must be an InteractivePrediction (the result of predict); got "
                f"{type(prediction).__name__} {short_repr(prediction, 80)}"
            )
        current = self._image_digest
        if current is None:
            raise RuntimeError("An image must be set with .set_image(...) before prediction.")
        if prediction.image_digest != current:
            raise ValueError(
                f"{name} was made on another image ({prediction.image_hw[0]}x"
                f"{prediction.image_hw[1]}, digest {prediction.image_digest}) than the one set "
                f"now ({self.image_hw[0]}x{self.image_hw[1]}, digest {current}); set_image its "
                "image again, or predict on the current image first"
            )

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
        results are cached per (cell, label), so asking for another field of the same
        requests predicts nothing (a posterior field is computed on first use). ``prediction``
        must be of the current image, when the look-ahead is made and whenever it predicts.
        """
        self._check_prediction(prediction)
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
            keys = _check_extra(requests, "lookahead requests")
            todo = list(dict.fromkeys(key for key in keys if key not in cache))
            if todo:
                self._check_prediction(prediction)  # the image may have changed since
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
        of the extended set); the head runs image by image (:meth:`_refine`). Each result
        equals :meth:`predict` of its extended set exactly where the segmenter decodes one set
        at a time (random_walker), else to float rounding; ``low_res_logits`` is None.

        Raises
        ------
        ValueError
            For clicks :func:`~laplace_head.segmenters.base.check_clicks` refuses (none given
            is allowed), an ``extra`` item that is not ``((row, col), label)`` with int cells
            on the 256 grid and a label of exactly 0/1, or what :meth:`predict` refuses.
        """
        image_hw = self.image_hw
        points, labels = check_clicks(
            point_coords, point_labels, image_hw, _CLICK_NAMES, min_points=0
        )
        extra = _check_extra(extra)
        if not extra:
            return []
        timings: dict[str, float] = {}
        all_sets = []
        for (row, col), label in extra:
            x, y = grid_to_image(row, col, image_hw)
            all_sets.append((np.vstack([points, [[x, y]]]), np.append(labels, label)))
        keys = [_memo_key(*click_set) for click_set in all_sets]
        memo = self._memo if mask_input is None else {}
        known = {key: memo[key] for key in keys if key in memo}
        click_sets = [s for s, k in zip(all_sets, keys) if k not in known]
        new = self._decode_extended(points, labels, click_sets, mask_input, timings)
        if mask_input is None and self.segmenter.batch_equals_single:
            for click_set, prediction in zip(click_sets, new):
                self._remember(_memo_key(*click_set), prediction)
        made = iter(new)
        return [known[k] if k in known else next(made) for k in keys]

    def _decode_extended(
        self,
        points: np.ndarray,
        labels: np.ndarray,
        click_sets: list[tuple[np.ndarray, np.ndarray]],
        mask_input: np.ndarray | None,
        timings: dict[str, float],
    ) -> list[InteractivePrediction]:
        """:meth:`predict_extended`'s batch: the extended ``click_sets`` of the clicks
        ``points``, ``labels``, one batched decode, prompt maps redrawn for the extra click."""
        if not click_sets:
            return []
        image_hw = self.image_hw
        start = time.perf_counter()
        decoded = self.segmenter.predict_batch(click_sets, mask_input=mask_input)
        _check_decoded(decoded)
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
        predictions = self._refine(click_sets, decoded, maps, timings)
        for prediction in predictions:
            prediction.image_digest = self._image_digest
        return predictions

    def click_state(self, prediction: InteractivePrediction, posterior: bool = True) -> ClickState:
        """What a click policy sees after ``prediction``: its maps, its clicked cells and its
        :meth:`lookahead` (no ground truth). ``posterior=False`` leaves the posterior maps
        None, for :data:`~laplace_head.interactive.clicks.POSTERIOR_FREE_POLICIES` (they are
        then not computed)."""
        self._check_prediction(prediction)
        lookahead = self.lookahead(prediction)
        return ClickState(
            map_probability=prediction.map_probability,
            entropy=prediction.entropy if posterior else None,
            bald=prediction.bald if posterior else None,
            clicked=prediction.clicked_cells(),
            predictive_probability=prediction.predictive_probability if posterior else None,
            lookahead=lookahead,
            lookahead_fields=lookahead,
            settings=self.policy_settings,
            output_temperature=self.posterior.output_temperature,
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
            Number of suggestions, 1 to 64 (fewer when the policy runs out of cells).
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

        Raises
        ------
        TypeError
            When ``prediction`` is not an :class:`InteractivePrediction`.
        ValueError
            For a prediction of another image, or arguments
            :func:`~laplace_head.interactive.clicks.check_suggest_arguments` refuses (``k`` an
            int in [1, :data:`~laplace_head.interactive.clicks.MAX_SUGGESTIONS`], a suggesting
            policy, ``min_distance`` finite >= 0, ``seed`` an int).
        """
        self._check_prediction(prediction)
        policy = self.suggest_policy if policy is None else policy
        distance = 2.0 * self.prompt_sigma if min_distance is None else min_distance
        check_suggest_arguments(policy, k, distance, seed)
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
    policy_settings: PolicySettings | Mapping[str, Any] | None = None,
) -> tuple[list[Suggestion], dict[str, np.ndarray]]:
    """Suggested next clicks for one head input, e.g. a stage-3 prompt set.

    Parameters
    ----------
    posterior
        The fitted head.
    inputs
        One (C, H, W) or (1, C, H, W) input ``[logits_256, pos_map, neg_map]`` (C = 3; the
        image head's C = 6 adds the image, :func:`~laplace_head.bayes.posterior.stack_inputs`
        with ``image_256``). Its given clicks - the cells where
        a prompt map exceeds 0.5 - are never suggested.
    k, policy
        As :meth:`InteractivePredictor.suggest` (a policy without look-ahead: there is no base
        segmenter to re-decode with).
    min_distance
        Grid pixels between suggestions; default ``2 * prompt_sigma``.
    policy_settings
        The rules' constants (e.g. the region level), or a mapping of them; default: the
        schema's.

    Returns
    -------
    tuple
        The suggestions, ``(x, y)`` in pixels of the H x W input grid, and the maps they were
        chosen from (:meth:`Posterior.uncertainty_maps
        <laplace_head.bayes.posterior.Posterior.uncertainty_maps>`, (H, W) NumPy, quadrature).
    """
    prompt_sigma = check_prompt_sigma(prompt_sigma)
    distance = 2.0 * prompt_sigma if min_distance is None else min_distance
    check_suggest_arguments(policy, k, distance, 0)
    if not isinstance(posterior, Posterior):
        raise TypeError(f"posterior must be a Posterior; got {type(posterior).__name__}")
    tensor = posterior.as_inputs(inputs)
    raw = inputs.detach() if isinstance(inputs, torch.Tensor) else torch.as_tensor(inputs)
    if not torch.isfinite(raw[..., 0, :, :]).all():
        raise UncertaintyInputError(
            "the base logits (channel 0 of inputs) contain NaN or infinite values; a stage-3 "
            "prompt set never does (check_logits refuses them)"
        )
    if tensor.shape[0] != 1:
        raise UncertaintyInputError(
            f"suggest_for_inputs takes one prompt set, ({tensor.shape[1]}, H, W); got a batch "
            f"of {tensor.shape[0]}"
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
        settings=PolicySettings.of(policy_settings),
    )
    return suggest(state, policy, k, distance, state.shape), maps
