"""Click simulation on the 256 grid: the RITM-style clickers, suggestion policies, coordinates.

Everything here works on the working grid (``GRID_SIZE`` x ``GRID_SIZE`` = 256 x 256) where the
base logits, the prompt maps, the head's outputs and the resized ground truth live. A grid
position is a **cell** ``(row, col)`` (ints); masks are (256, 256) bool NumPy arrays. The
helpers :func:`grid_to_image` / :func:`image_to_grid` convert to and from ``(x, y)`` in pixels of
the original (H, W) image with the pixel-centre convention of
:func:`laplace_head.prompts.sampling.rescale_points` (``x' = (x + 0.5) * 256 / W - 0.5``).

Clickers (the simulated user of the RITM protocol of Sofiiuk et al., "Reviving Iterative Training
with Mask Guidance for Interactive Segmentation"):

* :func:`first_click` - the interior-most ground-truth pixel: the maximum of the Euclidean
  distance transform of the mask, the image border counting as boundary (the mask is padded
  with background first).
* :func:`oracle_click` - the largest connected error region (4-connectivity; false negatives
  ``gt & ~pred`` and false positives ``pred & ~gt`` compared by pixel count), clicked at its
  distance-transform centre, positive (1) for a false-negative region and negative (0) for a
  false-positive one. Already clicked cells are neither clickable nor part of a region: they
  count as boundary. (RITM's own clicker compares the largest distance-transform values of the
  FN and FP masks instead of region sizes; on compact regions both pick the same region.)

Ties are broken deterministically: the first maximum in row-major order (lowest row, then
lowest column); between an FN and an FP region of the same size the FN region wins.

Policies (:data:`POLICIES`): ``policy(state, rng) -> (row, col) | None`` picks the next click
from a :class:`ClickState` (the head's current maps, the clicked cells and, for the oracle only,
the ground truth). ``None`` means there is nothing to click (the oracle finds no error; every
cell is clicked or excluded). Map-based policies smooth their map with a Gaussian of
:data:`SMOOTHING_SIGMA` grid pixels first, so that a click goes to the centre of an uncertain
*region* rather than to a single noisy pixel. The simulated user labels a non-oracle click by
the ground truth at that cell. Add a policy with :func:`register_policy`. Every suggestion
(the predictor, a click session, stage 7's panels) goes through :func:`suggest`: the policy's
cells as :class:`Suggestion` s in image pixels, each with the label it most likely gets
(:func:`likely_label`). Every random draw of
a simulation comes from :func:`click_rng` (seed, sample id, policy, click index), so results do
not depend on the order in which samples or policies are simulated.

Three further BALD rules read more than the BALD map:

* ``bald_raw`` - the argmax of the *unsmoothed* BALD map, the control for ``bald``: it shows
  what the smoothing buys (a click on the single most informative pixel, noisy or not).
* ``bald_region`` - the oracle's rule without the ground truth: the predicted error
  ``min(p, 1 - p)`` of the posterior predictive probability ``p``
  (:attr:`ClickState.predictive_probability`) stands in for the true error, its 4-connected
  regions at or above the region band's level (:attr:`PolicySettings.region_error_level`,
  default :data:`REGION_ERROR_LEVEL`) stand in for the error regions, the region
  with the largest BALD *sum* (not the largest pixel) is chosen and clicked at its
  distance-transform centre, as the oracle clicks its largest error region. Clicked cells are
  boundary, as for the oracle; with no such region it falls back to ``bald``.
* ``bald_lookahead`` - a one-step look-ahead: for the centres of the best
  ``lookahead_candidates`` (default :data:`LOOKAHEAD_CANDIDATES`) ``bald_region`` regions it
  re-predicts with the click added as positive and as negative (:attr:`ClickState.lookahead`)
  and picks the candidate whose expected remaining predicted error
  ``p(c) S(q1) + (1 - p(c)) S(q0)``, ``S(q) = sum min(q, 1 - q)``, is smallest, i.e. the
  largest expected reduction of predicted error. It costs ``2 * lookahead_candidates`` extra
  predictions per click, asked for in one look-ahead call (one batched decode and head pass).

Two rules aimed at what the oracle clicks:

* ``iou_lookahead`` - ``bald_lookahead``'s candidates, judged by the expected IoU of the head
  mask after the click (:func:`expected_iou`): the click's label is 1 with the predictive
  probability at the cell, and for either label the re-predicted logit's Gaussian
  ``N(map_logit, logit_variance)`` is integrated by Gauss-Hermite quadrature over a standard
  normal shift shared by every cell, so a posterior that is unsure of the whole mask lowers
  the expected IoU of a click more than one unsure of single pixels. The candidate with the
  largest expected IoU (the largest expected gain) wins.
* ``entropy_coverage`` - uncertainty traded against coverage, the strength of random's
  scattered clicks: the argmax of the smoothed predictive entropy times
  ``1 - exp(-d^2 / (2 r^2))``, ``d`` the distance to the nearest clicked cell and ``r``
  :attr:`PolicySettings.coverage_radius`, so a click near an earlier one needs much more
  uncertainty to win.

Posterior-free twins (:data:`POSTERIOR_TWINS`): every rule that reads the posterior
(``predictive_probability``, ``entropy``, ``bald`` or the look-ahead's variance) has a twin at
the same cost that reads only the MAP head (``map_probability`` and the look-ahead's MAP
outputs), so a comparison with its twin shows what the posterior adds to the rule:
``map_entropy`` / ``map_entropy_raw`` (the binary entropy of the MAP probability, smoothed /
not), ``map_region`` (the regions of MAP predicted error ranked by error mass),
``map_lookahead`` (the look-ahead with MAP probabilities), ``map_iou_lookahead`` (the expected
IoU with no variance) and ``map_coverage`` (MAP entropy times the coverage term).

The hand-set constants of these rules are :class:`PolicySettings` (``ClickState.settings``):
the region band, the look-ahead's number of candidates and the coverage radius, from the
``active_prompting`` config section (their defaults: the schema's).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from typing import Any, Protocol

import numpy as np
from scipy import ndimage, special

from laplace_head.bayes.predictive import tempered_moments
from laplace_head.settings import GRID_SIZE, POLICY_SETTING_KEYS, parse_policy
from laplace_head.util.seeding import derive_seed
from laplace_head.util.values import is_int

Cell = tuple[int, int]
Policy = Callable[["ClickState", np.random.Generator], "Cell | None"]

#: The look-ahead's default field: the posterior predictive probability.
PREDICTIVE_FIELD = "predictive_probability"


class Lookahead(Protocol):
    """``lookahead(requests, field)``: :attr:`ClickState.lookahead_fields` (the field defaults
    to the predictive probability, so it also serves as :attr:`ClickState.lookahead`)."""

    def __call__(
        self, requests: Sequence[tuple[Cell, int]], field: str = PREDICTIVE_FIELD
    ) -> list[np.ndarray]: ...


#: Standard deviation, in pixels of the 256 grid, of the Gaussian that smooths the maps of the
#: ``entropy``, ``bald`` and ``map_margin`` policies: about 1 % of the image side, well below the
#: prompt maps' default sigma (8), so a click lands inside the uncertain band it targets.
SMOOTHING_SIGMA = 3.0


@cache
def _schema_policy_settings() -> dict[str, Any]:
    from laplace_head.config.loader import fill_defaults, load_schema

    active = fill_defaults({}, load_schema())["active_prompting"]
    return {key: active[key] for key in POLICY_SETTING_KEYS}


#: Predicted-error level of the region rules (``bald_region``, ``map_region`` and the
#: look-ahead candidates), the schema's default of ``active_prompting.region_error_level``:
#: cells whose expected error ``min(p, 1 - p)`` is at least 0.25, i.e. ``0.25 <= p <= 0.75`` -
#: where the head gives the wrong class at least one time in four. Half way between a
#: confident cell (error 0) and a coin flip (0.5).
REGION_ERROR_LEVEL: float = _schema_policy_settings()["region_error_level"]

#: Candidates a look-ahead rule re-predicts (twice each: positive and negative), the schema's
#: default of ``active_prompting.lookahead_candidates`` (3).
LOOKAHEAD_CANDIDATES: int = _schema_policy_settings()["lookahead_candidates"]

#: Grid pixels of the coverage term of ``entropy_coverage`` / ``map_coverage``, the schema's
#: default of ``active_prompting.coverage_radius`` (16, twice the prompt maps' default sigma:
#: the distance :func:`suggest` keeps between suggestions).
COVERAGE_RADIUS: float = _schema_policy_settings()["coverage_radius"]

#: Gauss-Hermite nodes of :func:`expected_iou` (the IoU is smooth in the shared logit shift).
IOU_QUADRATURE_NODES = 8


@dataclass(frozen=True)
class PolicySettings:
    """The tunable constants of the click rules (``active_prompting`` config keys).

    Attributes
    ----------
    region_error_level
        Cells with predicted error ``min(p, 1 - p)`` at least this form the regions of
        ``bald_region`` / ``map_region`` (the band ``level <= p <= 1 - level``); in (0, 0.5].
    lookahead_candidates
        Candidate clicks a look-ahead rule re-predicts (with both labels each), >= 1.
    coverage_radius
        Grid pixels: the coverage term ``1 - exp(-d^2 / (2 r^2))`` of ``entropy_coverage`` and
        ``map_coverage``; > 0.
    """

    region_error_level: float = REGION_ERROR_LEVEL
    lookahead_candidates: int = LOOKAHEAD_CANDIDATES
    coverage_radius: float = COVERAGE_RADIUS

    def __post_init__(self) -> None:
        if not 0 < self.region_error_level <= 0.5:
            raise ValueError(
                f"region_error_level (active_prompting.region_error_level) = "
                f"{self.region_error_level!r} must be in (0, 0.5]"
            )
        if isinstance(self.lookahead_candidates, bool) or not (
            isinstance(self.lookahead_candidates, int | np.integer)
            and self.lookahead_candidates >= 1
        ):
            raise ValueError(
                f"lookahead_candidates (active_prompting.lookahead_candidates) = "
                f"{self.lookahead_candidates!r} must be an integer >= 1"
            )
        if not self.coverage_radius > 0:
            raise ValueError(
                f"coverage_radius (active_prompting.coverage_radius) = "
                f"{self.coverage_radius!r} must be > 0"
            )

    @classmethod
    def of(cls, settings: PolicySettings | Mapping[str, Any] | None) -> PolicySettings:
        """``settings`` as a :class:`PolicySettings`: itself, the fields of a mapping (a run's
        ``policy_settings`` parameters, stages 7 and 8), or the defaults for None."""
        if settings is None:
            return cls()
        if isinstance(settings, cls):
            return settings
        unknown = sorted(set(settings) - set(POLICY_SETTING_KEYS))
        if unknown:
            raise ValueError(
                f"unknown click-rule setting(s) {', '.join(map(repr, unknown))}; valid: "
                f"{', '.join(POLICY_SETTING_KEYS)}"
            )
        return cls(**settings)


#: The most suggestions one :func:`suggest` call returns (its ``k``): an annotator looks at a
#: handful, and each ``bald_lookahead`` suggestion costs ``2 * LOOKAHEAD_CANDIDATES``
#: predictions.
MAX_SUGGESTIONS = 64


# --- coordinates ----------------------------------------------------------------------------


def _scalar_or_array(values: np.ndarray, scalar: bool, kind: type) -> np.ndarray | int | float:
    return kind(values) if scalar else values


def grid_to_image(
    row: int | np.ndarray,
    col: int | np.ndarray,
    image_hw: tuple[int, int],
    size: int | tuple[int, int] = GRID_SIZE,
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Centre of grid cell(s) ``(row, col)`` as ``(x, y)`` in original-image pixels.

    Parameters
    ----------
    row, col
        Cell indices on the ``size`` grid (ints or integer arrays of one shape).
    image_hw
        (H, W) of the original image.
    size
        The grid's side, or its (rows, cols).

    Returns
    -------
    tuple
        ``(x, y)`` floats (arrays for array input): ``x = (col + 0.5) * W / size - 0.5`` (the
        inverse of :func:`~laplace_head.prompts.sampling.rescale_points`), so
        ``image_to_grid(*grid_to_image(r, c)) == (r, c)``. Not rounded to a pixel: for an image
        narrower than the grid several cells share one image pixel.
    """
    scalar = np.ndim(row) == 0 and np.ndim(col) == 0
    height, width = image_hw
    rows, cols = (size, size) if np.ndim(size) == 0 else size
    x = (np.asarray(col, dtype=np.float64) + 0.5) * width / cols - 0.5
    y = (np.asarray(row, dtype=np.float64) + 0.5) * height / rows - 0.5
    return _scalar_or_array(x, scalar, float), _scalar_or_array(y, scalar, float)


def image_to_grid(
    x: float | np.ndarray,
    y: float | np.ndarray,
    image_hw: tuple[int, int],
    size: int = GRID_SIZE,
) -> tuple[int | np.ndarray, int | np.ndarray]:
    """The grid cell ``(row, col)`` holding the image point ``(x, y)`` (pixels, x = column).

    Cell ``c`` covers ``c <= (x + 0.5) * size / W < c + 1`` (pixel-centre convention), clipped
    to ``[0, size - 1]`` for points on or beyond the image edge.
    """
    scalar = np.ndim(x) == 0 and np.ndim(y) == 0
    height, width = image_hw
    col = np.floor((np.asarray(x, dtype=np.float64) + 0.5) * size / width).astype(np.int64)
    row = np.floor((np.asarray(y, dtype=np.float64) + 0.5) * size / height).astype(np.int64)
    row, col = np.clip(row, 0, size - 1), np.clip(col, 0, size - 1)
    return _scalar_or_array(row, scalar, int), _scalar_or_array(col, scalar, int)


# --- clickers -------------------------------------------------------------------------------


def _as_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) mask; got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def clicked_mask(clicked: Iterable[Cell] | np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of the clicked cells (a cell set, a bool mask, or None for none)."""
    if isinstance(clicked, np.ndarray) and clicked.dtype == bool:
        if clicked.shape != shape:
            raise ValueError(f"clicked mask has shape {clicked.shape}; expected {shape}")
        return clicked
    mask = np.zeros(shape, dtype=bool)
    cells = np.asarray(list(clicked or ()), dtype=np.int64).reshape(-1, 2)
    if len(cells):
        mask[cells[:, 0], cells[:, 1]] = True
    return mask


def interior_point(mask: np.ndarray) -> Cell:
    """The cell of ``mask`` farthest from its boundary, the image border counting as boundary.

    Argmax of the Euclidean distance transform of ``mask`` padded with one ring of background;
    ties go to the lowest row, then the lowest column.

    Raises
    ------
    ValueError
        If ``mask`` is empty.
    """
    mask = _as_mask(mask, "mask")
    if not mask.any():
        raise ValueError("mask has no pixel to click")
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return int(row), int(col)


def first_click(gt_256: np.ndarray) -> Cell:
    """The RITM first click: the interior-most ground-truth cell (see :func:`interior_point`).

    Parameters
    ----------
    gt_256
        (256, 256) bool ground truth on the grid.

    Raises
    ------
    ValueError
        If the ground truth is empty.
    """
    gt = _as_mask(gt_256, "gt_256")
    if not gt.any():
        raise ValueError("the ground truth has no foreground pixel: no first click")
    return interior_point(gt)


def oracle_click(
    pred_256: np.ndarray,
    gt_256: np.ndarray,
    clicked: Iterable[Cell] | np.ndarray | None = (),
) -> tuple[Cell, int] | None:
    """The RITM corrective click on the largest error region (see the module docstring).

    Parameters
    ----------
    pred_256, gt_256
        (256, 256) bool predicted and ground-truth masks.
    clicked
        Cells clicked so far (a set of ``(row, col)`` or a bool mask): never clicked again and
        treated as boundary when the region's centre is found.

    Returns
    -------
    tuple or None
        ``((row, col), label)`` with label 1 (positive: a false-negative region) or 0 (negative:
        a false-positive region); None when no unclicked error pixel is left.
    """
    pred, gt = _as_mask(pred_256, "pred_256"), _as_mask(gt_256, "gt_256")
    if pred.shape != gt.shape:
        raise ValueError(f"pred_256 {pred.shape} and gt_256 {gt.shape} differ in shape")
    free = ~clicked_mask(clicked, gt.shape)
    best: tuple[int, np.ndarray, int] | None = None
    for label, error in ((1, gt & ~pred & free), (0, pred & ~gt & free)):
        regions, n_regions = ndimage.label(error)
        if n_regions == 0:
            continue
        sizes = np.bincount(regions.ravel())[1:]
        largest = int(np.argmax(sizes))  # first in scan order among equal sizes
        if best is None or sizes[largest] > best[0]:
            best = (int(sizes[largest]), regions == largest + 1, label)
    if best is None:
        return None
    return interior_point(best[1]), best[2]


# --- policies -------------------------------------------------------------------------------


@dataclass
class ClickState:
    """What a policy sees when it picks the next click (all maps (256, 256) on the grid).

    Attributes
    ----------
    map_probability
        The head's MAP foreground probability, in [0, 1].
    entropy
        Predictive entropy of the head's posterior (nats); None where only
        :data:`POSTERIOR_FREE_POLICIES` read the state (as ``bald``, ``predictive_probability``
        and ``lookahead``).
    bald
        BALD / mutual information (nats).
    clicked
        Cells already clicked: never clicked again.
    gt
        (256, 256) bool ground truth; set only for policies that may use it (the oracle).
    excluded
        Optional (256, 256) bool mask of further cells not to click (e.g. around suggestions
        already made).
    predictive_probability
        The posterior predictive foreground probability ``E[sigmoid(z)]``, in [0, 1]; read by
        ``bald_region`` and ``bald_lookahead`` (which raise without it) and by :func:`suggest`
        for the suggested label. :meth:`InteractivePredictor.click_state
        <laplace_head.interactive.predictor.InteractivePredictor.click_state>` always sets it.
    lookahead
        ``lookahead([((row, col), label), ...]) -> [(256, 256), ...]``: per request, the
        predictive probability after adding a click with ``label`` (1 positive, 0 negative) at
        the cell to the current clicks, without changing them. All requests of one call are
        predicted together (one batched decode and head pass); read by ``bald_lookahead``.
    lookahead_fields
        The same look-ahead for any grid map: ``lookahead_fields(requests, field)`` gives the
        ``field`` (:attr:`InteractivePrediction.GRID_FIELDS
        <laplace_head.interactive.predictor.InteractivePrediction.GRID_FIELDS>`, e.g.
        ``map_probability``, ``map_logits``, ``logit_variance``) per request; read by
        ``map_lookahead``, ``iou_lookahead`` and ``map_iou_lookahead``.
        :meth:`InteractivePredictor.click_state
        <laplace_head.interactive.predictor.InteractivePredictor.click_state>` sets both from
        one cache, so a rule and its twin re-decode the same candidates once.
    settings
        The rules' tunable constants (:class:`PolicySettings`; default: the schema's).
    output_temperature
        The posterior's ``tau`` (:attr:`Posterior.output_temperature
        <laplace_head.bayes.posterior.Posterior.output_temperature>`): ``iou_lookahead``
        integrates the logit ``z / tau`` as every other predictive quantity does.
    """

    map_probability: np.ndarray
    entropy: np.ndarray | None
    bald: np.ndarray | None
    clicked: set[Cell] = field(default_factory=set)
    gt: np.ndarray | None = None
    excluded: np.ndarray | None = None
    predictive_probability: np.ndarray | None = None
    lookahead: Callable[[Sequence[tuple[Cell, int]]], list[np.ndarray]] | None = None
    lookahead_fields: Lookahead | None = None
    settings: PolicySettings = field(default_factory=PolicySettings)
    output_temperature: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(np.shape(self.map_probability))  # type: ignore[return-value]

    def blocked(self) -> np.ndarray:
        """(H, W) bool: cells a policy must not pick (clicked or excluded)."""
        mask = clicked_mask(self.clicked, self.shape).copy()
        if self.excluded is not None:
            mask |= np.asarray(self.excluded, dtype=bool)
        return mask


#: Registered policies by name; see :func:`register_policy`.
POLICIES: dict[str, Policy] = {}
#: Names of the registered policies that read the ground truth (only these get ``state.gt``).
GROUND_TRUTH_POLICIES: set[str] = set()
#: Names of the registered policies that read no posterior field of the state (``entropy``,
#: ``bald``, ``predictive_probability``, ``lookahead``): a simulation may leave those None.
POSTERIOR_FREE_POLICIES: set[str] = set()


def register_policy(
    name: str, uses_ground_truth: bool = False, uses_posterior: bool = True
) -> Callable[[Policy], Policy]:
    """Decorator adding ``policy(state, rng) -> (row, col) | None`` to :data:`POLICIES`."""

    def decorate(policy: Policy) -> Policy:
        POLICIES[name] = policy
        for names, member in (
            (GROUND_TRUTH_POLICIES, uses_ground_truth),
            (POSTERIOR_FREE_POLICIES, not uses_posterior),
        ):
            if member:
                names.add(name)
            else:
                names.discard(name)
        return policy

    return decorate


def click_rng(seed: int, sample_id: str, policy: str, click_index: int) -> np.random.Generator:
    """The generator of one click's random draws: ``derive_seed(seed, sample_id, policy, i)``."""
    return np.random.default_rng(derive_seed(seed, sample_id, policy, click_index))


def smooth_map(values: np.ndarray, sigma: float = SMOOTHING_SIGMA) -> np.ndarray:
    """(H, W) float64 Gaussian-smoothed copy of a map (std ``sigma`` grid pixels, edges
    extended with the nearest value)."""
    return ndimage.gaussian_filter(np.asarray(values, dtype=np.float64), sigma, mode="nearest")


def _best_cell(score: np.ndarray, blocked: np.ndarray) -> Cell | None:
    """Cell of the largest ``score`` outside ``blocked`` (first in row-major order on ties)."""
    if blocked.all():
        return None
    masked = np.where(blocked, -np.inf, score)
    row, col = np.unravel_index(int(np.argmax(masked)), score.shape)
    return int(row), int(col)


@register_policy("oracle", uses_ground_truth=True, uses_posterior=False)
def oracle_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """:func:`oracle_click` on the head's MAP mask (``map_probability > 0.5``)."""
    if state.gt is None:
        raise ValueError("the oracle policy needs the ground truth (ClickState.gt)")
    click = oracle_click(np.asarray(state.map_probability) > 0.5, state.gt, state.blocked())
    return None if click is None else click[0]


@register_policy("random", uses_posterior=False)
def random_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """A cell drawn uniformly from the cells not clicked (nor excluded)."""
    free = np.flatnonzero(~state.blocked())
    if free.size == 0:
        return None
    row, col = np.unravel_index(int(free[rng.integers(free.size)]), state.shape)
    return int(row), int(col)


@register_policy("entropy")
def entropy_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """Argmax of the smoothed predictive entropy over the clickable cells."""
    return _best_cell(smooth_map(state.entropy), state.blocked())


@register_policy("bald")
def bald_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """Argmax of the smoothed BALD (mutual information) over the clickable cells."""
    return _best_cell(smooth_map(state.bald), state.blocked())


@register_policy("bald_raw")
def bald_raw_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """Argmax of the unsmoothed BALD over the clickable cells."""
    return _best_cell(np.asarray(state.bald, dtype=np.float64), state.blocked())


def _predictive_probability(state: ClickState, policy: str) -> np.ndarray:
    if state.predictive_probability is None:
        raise ValueError(
            f"the {policy} policy needs the predictive probability "
            "(ClickState.predictive_probability)"
        )
    probability = np.asarray(state.predictive_probability, dtype=np.float64)
    if probability.shape != state.shape:
        raise ValueError(
            f"predictive_probability has shape {probability.shape}; expected {state.shape}"
        )
    return probability


def predicted_error(probability: np.ndarray) -> np.ndarray:
    """Expected 0-1 error ``min(p, 1 - p)`` of predicting the likelier class, per cell."""
    probability = np.asarray(probability, dtype=np.float64)
    return np.minimum(probability, 1.0 - probability)


def _map_probability(state: ClickState) -> np.ndarray:
    return np.asarray(state.map_probability, dtype=np.float64)


def map_entropy(probability: np.ndarray) -> np.ndarray:
    """(H, W) float64 binary entropy (nats) of a MAP probability map: the entropy of the
    posterior-free head (:func:`~laplace_head.bayes.predictive.binary_entropy_from_logits` of
    its log-odds; 0 and 1 count as ``1e-12`` from them)."""
    import torch

    from laplace_head.bayes.predictive import binary_entropy_from_logits

    logits = torch.logit(torch.from_numpy(np.asarray(probability, dtype=np.float64)), eps=1e-12)
    return binary_entropy_from_logits(logits).numpy()


def error_regions(state: ClickState, probability: np.ndarray) -> tuple[np.ndarray, int]:
    """``(labels, count)`` of the regions :func:`region_centres` ranks: the 4-connected
    components (:func:`scipy.ndimage.label`) of the clickable cells whose predicted error
    ``min(p, 1 - p)`` of ``probability`` is at least ``state.settings.region_error_level``."""
    level = state.settings.region_error_level
    labels, count = ndimage.label(~state.blocked() & (predicted_error(probability) >= level))
    return labels, int(count)


def region_centres(
    state: ClickState, n: int, probability: np.ndarray, weight: np.ndarray
) -> list[Cell]:
    """Centres of the ``n`` regions of predicted error with the largest ``weight`` sums, best
    first.

    The regions are the :func:`error_regions` of ``probability``; they are ranked by the sum
    of ``weight`` over them (ties: first in label, i.e. scan, order) and each is clicked at
    its :func:`interior_point` (blocked cells count as boundary). Fewer than ``n`` when there
    are fewer regions.
    """
    labels, n_regions = error_regions(state, probability)
    if n_regions == 0 or n <= 0:
        return []
    weight = np.asarray(weight, dtype=np.float64)
    sums = np.bincount(labels.ravel(), weights=weight.ravel(), minlength=n_regions + 1)[1:]
    order = np.argsort(-sums, kind="stable")[:n]
    boxes = ndimage.find_objects(labels)
    centres = []
    for index in order:
        box = boxes[index]
        # The centre in the region's bounding box is the centre in the whole grid: every cell
        # outside the box is background, and the box's padding ring is nearer than any of them.
        row, col = interior_point(labels[box] == index + 1)
        centres.append((int(row + box[0].start), int(col + box[1].start)))
    return centres


def bald_region_centres(state: ClickState, n: int, policy: str = "bald_region") -> list[Cell]:
    """:func:`region_centres` of the posterior predictive probability, ranked by BALD sum."""
    probability = _predictive_probability(state, policy)
    return region_centres(state, n, probability, state.bald)


def map_region_centres(state: ClickState, n: int) -> list[Cell]:
    """:func:`region_centres` of the MAP probability, ranked by MAP error mass
    ``sum min(p, 1 - p)`` (the posterior-free twin of :func:`bald_region_centres`)."""
    probability = _map_probability(state)
    return region_centres(state, n, probability, predicted_error(probability))


@register_policy("bald_region")
def bald_region_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """Centre of the uncertain region with the largest BALD sum (``bald`` without one)."""
    centres = bald_region_centres(state, 1)
    return centres[0] if centres else bald_policy(state, rng)


@register_policy("map_entropy", uses_posterior=False)
def map_entropy_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """Argmax of the smoothed MAP binary entropy (:func:`map_entropy`) over the clickable
    cells: the twin of ``entropy`` and ``bald``."""
    return _best_cell(smooth_map(map_entropy(state.map_probability)), state.blocked())


@register_policy("map_entropy_raw", uses_posterior=False)
def map_entropy_raw_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """Argmax of the unsmoothed MAP binary entropy: the twin of ``bald_raw``."""
    return _best_cell(map_entropy(state.map_probability), state.blocked())


@register_policy("map_region", uses_posterior=False)
def map_region_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """Centre of the MAP predicted-error region with the largest error mass (``map_entropy``
    without one): the twin of ``bald_region``."""
    centres = map_region_centres(state, 1)
    return centres[0] if centres else map_entropy_policy(state, rng)


def _total_error(probability: np.ndarray) -> float:
    return float(predicted_error(probability).sum())


def _candidates(state: ClickState, centres: list[Cell], fallback_score: np.ndarray) -> list[Cell]:
    """``centres`` topped up to ``state.settings.lookahead_candidates`` with the next
    argmaxes of ``fallback_score`` (the clickable cells not yet candidates)."""
    wanted = state.settings.lookahead_candidates
    candidates = list(centres)
    if len(candidates) < wanted:
        blocked = state.blocked() | clicked_mask(candidates, state.shape)
        while len(candidates) < wanted:
            cell = _best_cell(fallback_score, blocked)
            if cell is None:
                break
            candidates.append(cell)
            blocked[cell] = True
    return candidates


def _posterior_candidates(state: ClickState, policy: str) -> list[Cell]:
    """The BALD-region centres, topped up with smoothed-BALD argmaxes."""
    n = state.settings.lookahead_candidates
    return _candidates(state, bald_region_centres(state, n, policy), smooth_map(state.bald))


def _map_candidates(state: ClickState) -> list[Cell]:
    """The MAP-region centres, topped up with smoothed MAP-entropy argmaxes."""
    n = state.settings.lookahead_candidates
    fallback = smooth_map(map_entropy(state.map_probability))
    return _candidates(state, map_region_centres(state, n), fallback)


def _requests(candidates: list[Cell]) -> list[tuple[Cell, int]]:
    """Each candidate with label 1, then 0: the look-ahead requests of a rule."""
    return [(cell, label) for cell in candidates for label in (1, 0)]


def _look(state: ClickState, policy: str, candidates: list[Cell], field: str) -> list[np.ndarray]:
    """:attr:`ClickState.lookahead_fields`'s ``field`` after each of :func:`_requests`."""
    if state.lookahead_fields is None:
        raise ValueError(
            f"the {policy} policy needs a look-ahead of the grid fields "
            "(ClickState.lookahead_fields)"
        )
    return state.lookahead_fields(_requests(candidates), field)


def _label_weighted_best(
    candidates: list[Cell],
    label_probability: np.ndarray,
    score_positive: list[float],
    score_negative: list[float],
    lower_is_better: bool,
) -> Cell | None:
    """The candidate with the best ``p(c) s1 + (1 - p(c)) s0`` (ties: the first)."""
    best: tuple[float, Cell] | None = None
    for cell, positive, negative in zip(candidates, score_positive, score_negative):
        p = float(label_probability[cell])
        expected = p * positive + (1.0 - p) * negative
        if not lower_is_better:
            expected = -expected
        if best is None or expected < best[0]:
            best = (expected, cell)
    return None if best is None else best[1]


def _least_expected_error(
    candidates: list[Cell], label_probability: np.ndarray, after: list[np.ndarray]
) -> Cell | None:
    """The candidate with the least ``p(c) S(q1) + (1 - p(c)) S(q0)`` (module docstring)."""
    errors = [_total_error(probability) for probability in after]
    return _label_weighted_best(candidates, label_probability, errors[0::2], errors[1::2], True)


@register_policy("bald_lookahead")
def bald_lookahead_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """The candidate click with the least expected predicted error after it (one step ahead).

    Candidates: the :func:`bald_region_centres` of the best
    ``state.settings.lookahead_candidates`` regions, topped up with the next smoothed-BALD
    argmaxes. Ties: the first candidate.
    """
    if state.lookahead is None:
        raise ValueError("the bald_lookahead policy needs a look-ahead (ClickState.lookahead)")
    probability = _predictive_probability(state, "bald_lookahead")
    candidates = _posterior_candidates(state, "bald_lookahead")
    return _least_expected_error(candidates, probability, state.lookahead(_requests(candidates)))


@register_policy("map_lookahead", uses_posterior=False)
def map_lookahead_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """``bald_lookahead`` on the MAP head: candidates from :func:`map_region_centres` (topped
    up with smoothed MAP-entropy argmaxes), the label probability and the remaining error
    from MAP probabilities (the look-ahead's ``map_probability``). Its twin."""
    candidates = _map_candidates(state)
    after = _look(state, "map_lookahead", candidates, "map_probability")
    return _least_expected_error(candidates, _map_probability(state), after)


def expected_iou(
    map_logits: np.ndarray,
    logit_variance: np.ndarray | None = None,
    n_nodes: int = IOU_QUADRATURE_NODES,
) -> float:
    """The expected IoU of the head mask ``M = map_logits > 0`` under a Gaussian logit.

    The true mask ``Y`` is Bernoulli(``sigmoid(z)``) per cell with ``z = map_logits + sd * e``,
    ``sd = sqrt(logit_variance)`` and one standard normal ``e`` shared by every cell (the
    linearised posterior moves the logits of one image together). Given ``e`` the IoU is
    taken as ``E|M & Y| / E|M | Y| = sum_M q / (|M| + sum_{not M} q)``, ``q = sigmoid(z)``
    (1 when both are empty); ``e`` is integrated by ``n_nodes``-point Gauss-Hermite
    quadrature. Without ``logit_variance`` (the MAP head) ``z = map_logits``.

    Parameters
    ----------
    map_logits, logit_variance
        (H, W) MAP logits and their posterior variance (squared log-odds).
    """
    logits = np.asarray(map_logits, dtype=np.float64)
    mask = logits > 0
    if logit_variance is None:
        nodes, weights = np.zeros(1), np.ones(1)
        sd = np.zeros_like(logits)
    else:
        nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
        weights = weights / weights.sum()
        sd = np.sqrt(np.clip(np.asarray(logit_variance, dtype=np.float64), 0.0, None))
    size = float(mask.sum())
    total = 0.0
    for node, weight in zip(nodes, weights):
        q = special.expit(logits + sd * node)
        inside = float(q[mask].sum())
        union = size + float(q.sum()) - inside
        total += weight * (inside / union if union > 0 else 1.0)
    return total


@register_policy("iou_lookahead")
def iou_lookahead_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """Of ``bald_lookahead``'s candidates, the click with the largest expected IoU of the head
    mask after it (:func:`expected_iou` of the look-ahead's MAP logits and logit variance,
    the label 1 with the predictive probability at the cell). Ties: the first candidate."""
    probability = _predictive_probability(state, "iou_lookahead")
    candidates = _posterior_candidates(state, "iou_lookahead")
    logits = _look(state, "iou_lookahead", candidates, "map_logits")
    variances = _look(state, "iou_lookahead", candidates, "logit_variance")
    tau = state.output_temperature
    ious = [expected_iou(*tempered_moments(z, v, tau)) for z, v in zip(logits, variances)]
    return _label_weighted_best(candidates, probability, ious[0::2], ious[1::2], False)


@register_policy("map_iou_lookahead", uses_posterior=False)
def map_iou_lookahead_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """``iou_lookahead`` on the MAP head (its twin): ``map_lookahead``'s candidates, the label
    probability from the MAP probability and the expected IoU without variance."""
    candidates = _map_candidates(state)
    logits = _look(state, "map_iou_lookahead", candidates, "map_logits")
    ious = [expected_iou(z) for z in logits]
    return _label_weighted_best(candidates, _map_probability(state), ious[0::2], ious[1::2], False)


def coverage(state: ClickState) -> np.ndarray:
    """(H, W) float64 coverage term ``1 - exp(-d^2 / (2 r^2))``: ``d`` the distance (grid
    pixels) to the nearest clicked cell, ``r`` ``state.settings.coverage_radius``; 1
    everywhere before any click."""
    clicked = clicked_mask(state.clicked, state.shape)
    if not clicked.any():
        return np.ones(state.shape)
    distance = ndimage.distance_transform_edt(~clicked)
    return -np.expm1(-(distance**2) / (2.0 * state.settings.coverage_radius**2))


@register_policy("entropy_coverage")
def entropy_coverage_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """Argmax of the smoothed predictive entropy times :func:`coverage` over the clickable
    cells: uncertainty traded against distance from the clicks made."""
    return _best_cell(smooth_map(state.entropy) * coverage(state), state.blocked())


@register_policy("map_coverage", uses_posterior=False)
def map_coverage_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """``entropy_coverage`` with the MAP binary entropy (its twin)."""
    score = smooth_map(map_entropy(state.map_probability)) * coverage(state)
    return _best_cell(score, state.blocked())


@register_policy("map_margin", uses_posterior=False)
def map_margin_policy(state: ClickState, rng: np.random.Generator) -> Cell | None:
    """Argmin of the smoothed margin ``|p_map - 0.5|`` over the clickable cells."""
    margin = smooth_map(np.abs(np.asarray(state.map_probability, dtype=np.float64) - 0.5))
    return _best_cell(-margin, state.blocked())


#: The posterior-free twin of every rule that reads the posterior, at the same cost (module
#: docstring); its keys are the posterior rules. Stage 8 and the ablation pair each posterior
#: rule with its twin when both ran.
POSTERIOR_TWINS: dict[str, str] = {
    "entropy": "map_entropy",
    "bald": "map_entropy",
    "bald_raw": "map_entropy_raw",
    "bald_region": "map_region",
    "bald_lookahead": "map_lookahead",
    "iou_lookahead": "map_iou_lookahead",
    "entropy_coverage": "map_coverage",
}


def suggest_cells(
    state: ClickState,
    policy: str,
    k: int,
    min_distance: float,
    seed: int = 0,
    stream: tuple = (),
) -> list[Cell]:
    """The next ``k`` cells ``policy`` proposes from one state, best first.

    After each pick the cell and the disc of radius ``min_distance`` (grid cells; 0: only the
    cell) around it join ``state.excluded``, so the next pick points at a different region.
    Fewer than ``k`` when the policy runs out of cells. The ``random`` policy is seeded by
    ``seed``, ``stream`` and the pick's index.
    """
    chooser = get_policy(policy)
    if state.excluded is None:
        state.excluded = np.zeros(state.shape, dtype=bool)
    cells: list[Cell] = []
    for index in range(k):
        rng = np.random.default_rng(derive_seed(seed, "suggest", policy, *stream, index))
        cell = chooser(state, rng)
        if cell is None:
            break
        cells.append(cell)
        _exclude_disc(state.excluded, cell, min_distance)
    return cells


def _exclude_disc(excluded: np.ndarray, cell: Cell, radius: float) -> None:
    """Mark ``cell`` and the cells closer than ``radius`` to it in ``excluded`` (in place),
    computed on the disc's bounding box only."""
    row, col = cell
    excluded[row, col] = True
    if radius <= 0:
        return
    reach = math.ceil(radius)
    top, left = max(row - reach, 0), max(col - reach, 0)
    bottom, right = min(row + reach + 1, excluded.shape[0]), min(col + reach + 1, excluded.shape[1])
    rows = np.arange(top, bottom)[:, None] - row
    cols = np.arange(left, right)[None, :] - col
    excluded[top:bottom, left:right] |= rows**2 + cols**2 < radius**2


def likely_label(predictive_probability: np.ndarray, cell: Cell) -> int:
    """The label a click at ``cell`` most likely gets: 1 (positive) where the posterior
    predictive probability is > 0.5, else 0 - the label rule of every suggestion."""
    return 1 if predictive_probability[cell] > 0.5 else 0


@dataclass(frozen=True)
class Suggestion:
    """One suggested click, the type every suggestion route returns.

    Attributes
    ----------
    rank
        0 for the policy's first choice, then 1, 2, ...
    x, y
        The click in image pixels (x = column): the centre of its grid cell
        (:func:`grid_to_image`).
    label
        1 (positive) or 0 (negative): the label the click most likely gets
        (:func:`likely_label`).
    row, col
        Its cell on the 256 grid.
    predictive_probability
        The posterior predictive foreground probability at the cell.
    """

    rank: int
    x: float
    y: float
    label: int
    row: int
    col: int
    predictive_probability: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def suggesting_policies() -> list[str]:
    """The registered policies that suggest (all but the ground-truth ones), sorted."""
    return sorted(set(POLICIES) - GROUND_TRUTH_POLICIES)


def check_suggest_arguments(policy: object, k: object, min_distance: object, seed: object) -> None:
    """Refuse (ValueError) :func:`suggest` arguments out of range, naming the argument, the
    value and the valid range: ``policy`` a suggesting policy name, ``k`` an int in [1,
    :data:`MAX_SUGGESTIONS`], ``min_distance`` a finite number >= 0, ``seed`` an int."""
    if reads_ground_truth(policy):  # type: ignore[arg-type]  (ValueError for an unknown one)
        raise ValueError(
            f"the {policy} policy reads the ground truth: it simulates a user "
            "(laplace_head.interactive.simulate) and suggests nothing; pick one of "
            f"{', '.join(suggesting_policies())}"
        )
    if not is_int(k) or not 1 <= k <= MAX_SUGGESTIONS:
        raise ValueError(f"k (suggestions) must be an int in [1, {MAX_SUGGESTIONS}]; got {k!r}")
    if (
        not isinstance(min_distance, numbers.Real)
        or isinstance(min_distance, bool | np.bool_)
        or not math.isfinite(min_distance)
        or min_distance < 0
    ):
        raise ValueError(
            f"min_distance (grid pixels) must be a finite number >= 0; got {min_distance!r}"
        )
    if not is_int(seed):
        raise ValueError(f"seed must be an int; got {seed!r}")


def suggest(
    state: ClickState,
    policy: str,
    k: int,
    min_distance: float,
    image_hw: tuple[int, int],
    seed: int = 0,
    stream: tuple = (),
) -> list[Suggestion]:
    """The next ``k`` clicks ``policy`` proposes from one state, best first (the one route from a
    policy of the registry to suggested clicks).

    Cells come from :func:`suggest_cells` (``min_distance``, ``seed`` and ``stream`` as there),
    then go to ``(x, y)`` pixels of an ``image_hw`` image and get the :func:`likely_label` of
    ``state.predictive_probability`` (required). Ground-truth policies (the oracle) are for
    simulations and are refused here.

    Raises
    ------
    ValueError
        For an unknown or ground-truth policy, arguments out of range
        (:func:`check_suggest_arguments`), or a state without the predictive probability.
    """
    check_suggest_arguments(policy, k, min_distance, seed)
    probability = _predictive_probability(state, "suggestion label")
    cells = suggest_cells(state, policy, k, min_distance, seed, stream)
    suggestions = []
    for rank, (row, col) in enumerate(cells):
        x, y = grid_to_image(row, col, image_hw, size=state.shape)
        suggestions.append(
            Suggestion(
                rank=rank,
                x=float(x),
                y=float(y),
                label=likely_label(probability, (row, col)),
                row=int(row),
                col=int(col),
                predictive_probability=float(probability[row, col]),
            )
        )
    return suggestions


def policy_rule(policy: str) -> tuple[str, dict[str, float | int]]:
    """A policy entry's registered rule name and setting overrides
    (:func:`~laplace_head.settings.parse_policy`); ValueError naming the entry and listing the
    valid names for an unknown rule, or for an override out of :class:`PolicySettings`' range."""
    name, overrides = parse_policy(policy) if isinstance(policy, str) else (policy, {})
    if not isinstance(name, str) or name not in POLICIES:
        raise ValueError(
            f"unknown click policy {policy!r}; valid: {', '.join(sorted(POLICIES))}, each "
            "optionally with setting overrides, e.g. bald_region@region_error_level=0.15"
        )
    if overrides:
        try:
            PolicySettings(**overrides)
        except ValueError as exc:
            raise ValueError(f"click policy {policy!r}: {exc}") from None
    return name, overrides


def _with_settings(
    rule: Policy, overrides: dict[str, float | int], state: ClickState, rng: np.random.Generator
) -> Cell | None:
    """``rule`` on ``state`` with its settings overridden for this one call."""
    settings = state.settings
    state.settings = replace(settings, **overrides)
    try:
        return rule(state, rng)
    finally:
        state.settings = settings


def get_policy(policy: str) -> Policy:
    """The registered policy of a policy entry: a name of :data:`POLICIES`, or a name with
    setting overrides (``bald_region@region_error_level=0.15``: the rule with those
    :class:`PolicySettings`, whatever the state's); ValueError as :func:`policy_rule`."""
    name, overrides = policy_rule(policy)
    if not overrides:
        return POLICIES[name]
    return functools.partial(_with_settings, POLICIES[name], overrides)


def reads_ground_truth(policy: str) -> bool:
    """Whether the entry's rule reads the ground truth (:data:`GROUND_TRUTH_POLICIES`)."""
    return policy_rule(policy)[0] in GROUND_TRUTH_POLICIES


def reads_posterior(policy: str) -> bool:
    """Whether the entry's rule reads a posterior field (not :data:`POSTERIOR_FREE_POLICIES`)."""
    return policy_rule(policy)[0] not in POSTERIOR_FREE_POLICIES


def posterior_twin(policy: str) -> str | None:
    """The posterior-free twin of a policy entry (:data:`POSTERIOR_TWINS`), with the same
    setting overrides (``bald_region@region_error_level=0.15`` ->
    ``map_region@region_error_level=0.15``); None for a rule without one."""
    name, _ = policy_rule(policy)
    twin = POSTERIOR_TWINS.get(name)
    return None if twin is None else twin + policy[len(name) :]
