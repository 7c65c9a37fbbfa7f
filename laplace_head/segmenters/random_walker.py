"""The ``random_walker`` base segmenter: scikit-image's random walker seeded by the prompts.

It needs no weights and no GPU, which makes it the default of the demo and of CPU-only
machines. What it does, per image and prompt set:

1. ``set_image`` downscales the image so its longer side is at most ``max_side`` pixels
   (Pillow bilinear, which is area-aware when shrinking; images already small enough are kept)
   and converts it to float in [0, 1].
2. Positive points become seeds of label 1, negative points seeds of label 2, at their
   pixel-centre-aligned position on the small grid (``x' = (x + 0.5) * w / W - 0.5``, rounded).
   Where a positive and a negative point land on the same small pixel the positive one wins.
3. The probability ``p`` that a walker from each pixel reaches a positive seed first: the
   harmonic function of the image graph's Laplacian ``L`` (scikit-image's: 4-neighbour edges
   weighted ``exp(-beta g^2 / (10 std sqrt(channels))) + 1e-10``, g the colour difference) that
   is 1 at positive and 0 at negative seeds, ``L_UU p_U = -L_US p_S`` on the unseeded pixels U.
   ``bf`` (default) solves it directly, through :class:`WalkerSystem`: the image's grounded
   Laplacian ``L + c e_a e_a^T`` is factorized once (sparse LU), every seed pixel's column of its
   inverse is solved once and kept, and a prompt set's ``p`` is those columns' combination that
   meets the seeds (a (seeds + 1)-square system), refined once against ``L`` itself. A
   prompt set costs a few ms instead of a ~60 ms factorization (``bench/bench_interactive.py``);
   grids above 131,072 pixels (:data:`MIN_KEPT_COLUMNS` columns in :data:`KEPT_COLUMN_BYTES`)
   are solved afresh per prompt set by scikit-image instead. Its residual is at float64
   rounding, like that of scikit-image's ``random_walker(mode="bf")``, from which it differs by
   < 1e-5 in ``p`` (the weak edges make the system ill-conditioned;
   tests/unit/test_segmenters.py). ``cg_j`` is scikit-image's Jacobi-preconditioned CG.
4. ``p`` is resized to 256 x 256 (Pillow bilinear, pixel centres aligned), clipped to
   [1e-4, 1 - 1e-4] and turned into logits ``log(p / (1 - p))``, so ``|logit| <= 9.21``.

The single "branch" has index 0; its score is the mean confidence ``mean(max(p, 1 - p))`` on
the small grid.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
from PIL import Image
from scipy import sparse
from scipy.sparse.linalg import splu

from laplace_head.segmenters.base import BaseSegmenter, Prediction
from laplace_head.settings import GRID_SIZE
from laplace_head.util.atomic import json_dumps
from laplace_head.util.seeding import stable_hash
from laplace_head.util.values import is_int

LOGGER = logging.getLogger(__name__)

PROB_EPS = 1e-4
MODES = ("bf", "cg_j")
# Bump when the algorithm changes, so cached logits are recomputed. (Not bumped for the kept
# factorization of WalkerSystem: its p equals scikit-image's solve to 2e-6, below the float16
# logits' storage rounding almost everywhere, so earlier caches stay valid.)
ALGORITHM_VERSION = 1
POSITIVE_LABEL, NEGATIVE_LABEL = 1, 2
# scikit-image's edge-weight floor: the graph stays connected across the strongest edge.
EDGE_WEIGHT_FLOOR = 1e-10
# Memory for the columns of the grounded Laplacian's inverse a WalkerSystem keeps (one per seed
# pixel seen, 8 bytes per small-grid pixel each: 154 KB at 120 x 160, so ~436 columns there).
KEPT_COLUMN_BYTES = 64 * 2**20
# A grid too large to keep this many columns in that memory (> 131,072 pixels, a longer side
# above ~400) is solved afresh per prompt set by scikit-image, as before WalkerSystem.
MIN_KEPT_COLUMNS = 64


def kept_columns(n_pixels: int) -> int:
    """How many float64 columns of ``n_pixels`` fit in :data:`KEPT_COLUMN_BYTES`."""
    return KEPT_COLUMN_BYTES // (np.dtype(np.float64).itemsize * n_pixels)


def probability_to_logits(prob: np.ndarray, eps: float = PROB_EPS) -> np.ndarray:
    """``log(p / (1 - p))`` of ``p`` clipped to [eps, 1 - eps]; float32, same shape."""
    clipped = np.clip(np.asarray(prob, dtype=np.float64), eps, 1.0 - eps)
    return (np.log(clipped) - np.log1p(-clipped)).astype(np.float32)


def _resize_float(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64)


def graph_laplacian(image: np.ndarray, beta: float) -> sparse.csr_array:
    """The random walker's graph Laplacian of an (H, W, C) float image, as scikit-image's
    ``random_walker`` builds it (``channel_axis=-1``): 4-neighbour edges weighted
    ``exp(-beta g^2 / (10 std sqrt(C))) + 1e-10``, ``g^2`` the squared colour difference summed
    over channels and ``std`` the whole image's; degrees on the diagonal. (H W, H W), float64."""
    image = np.asarray(image, dtype=np.float64)
    height, width, channels = image.shape
    nodes = np.arange(height * width).reshape(height, width)
    right = (np.diff(image, axis=1) ** 2).sum(-1).ravel()
    down = (np.diff(image, axis=0) ** 2).sum(-1).ravel()
    scale = -beta / (10 * image.std()) / math.sqrt(channels)
    weights = np.exp(scale * np.concatenate([right, down])) + EDGE_WEIGHT_FLOOR
    first = np.concatenate([nodes[:, :-1].ravel(), nodes[:-1].ravel()])
    second = np.concatenate([nodes[:, 1:].ravel(), nodes[1:].ravel()])
    n = height * width
    degree = np.bincount(first, weights, n) + np.bincount(second, weights, n)
    rows = np.concatenate([first, second, np.arange(n)])
    cols = np.concatenate([second, first, np.arange(n)])
    return sparse.csr_array((np.concatenate([-weights, -weights, degree]), (rows, cols)), (n, n))


class WalkerSystem:
    """The random walker's linear system of one image, factorized once for every prompt set.

    ``L`` (:func:`graph_laplacian`) is singular (constants), so the factorized matrix is the
    grounded ``M = L + c e_a e_a^T`` (anchor ``a`` = pixel 0, ``c`` the mean degree), SPD. The
    walker's ``p`` satisfies ``L p = E r`` (a flux ``r`` at the seeds E only) with ``p_S`` given,
    so ``p = M^-1 E r + (c p_a) M^-1 e_a``: a combination of the kept columns ``M^-1 e_s`` of the
    seeds and the anchor, whose k + 1 coefficients solve ``p_S = v_S`` and ``c p_a = y_a`` (the
    anchor among the seeds needs no column of its own). One step of iterative refinement against
    ``L_UU`` takes the residual to float64 rounding.
    """

    def __init__(self, laplacian: sparse.csr_array) -> None:
        self.laplacian = sparse.csr_array(laplacian)
        self.n = self.laplacian.shape[0]
        self.anchor = 0
        self.scale = float(self.laplacian.diagonal().mean())
        grounded = self.laplacian.tolil()
        grounded[self.anchor, self.anchor] += self.scale
        self._lu = splu(
            sparse.csc_matrix(grounded),
            permc_spec="MMD_AT_PLUS_A",
            diag_pivot_thresh=0.0,
            options={"SymmetricMode": True},
        )
        self._columns: OrderedDict[int, np.ndarray] = OrderedDict()

    def _inverse_columns(self, nodes: list[int]) -> np.ndarray:
        """``M^-1 e_q`` for every node q, (n, len(nodes)); missing ones solved in one call."""
        missing = [q for q in dict.fromkeys(nodes) if q not in self._columns]
        if missing:
            unit = np.zeros((self.n, len(missing)))
            unit[missing, np.arange(len(missing))] = 1.0
            for q, column in zip(missing, self._lu.solve(unit).T, strict=True):
                self._columns[q] = np.ascontiguousarray(column)
        for q in nodes:
            self._columns.move_to_end(q)
        while len(self._columns) > max(kept_columns(self.n), len(nodes)):
            self._columns.popitem(last=False)
        return np.stack([self._columns[q] for q in nodes], axis=1)

    def _constrained(
        self, seeds: np.ndarray, columns: np.ndarray, values: np.ndarray, load: np.ndarray | None
    ) -> np.ndarray:
        """``x`` with ``x_S = values`` and ``(L x)_U = load_U`` (0 without a load)."""
        base = np.zeros(self.n) if load is None else self._lu.solve(load)
        k = len(seeds)
        if columns.shape[1] == k:  # the anchor is a seed
            system, rhs = columns[seeds], values - base[seeds]
        else:
            system = np.vstack([columns[seeds], self.scale * columns[self.anchor]])
            system[k, k] -= 1.0
            rhs = np.append(values - base[seeds], -self.scale * base[self.anchor])
        x = base + columns @ np.linalg.solve(system, rhs)
        x[seeds] = values
        return x

    def probability(self, seeds: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The harmonic ``p`` (n,) that equals ``values`` at the flat pixel indices ``seeds``
        (distinct, at least one) and solves ``L_UU p_U = -L_US p_S`` elsewhere."""
        seeds = np.asarray(seeds, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        nodes = seeds.tolist()
        if self.anchor not in nodes:
            nodes.append(self.anchor)
        columns = self._inverse_columns(nodes)
        x = self._constrained(seeds, columns, values, None)
        residual = -(self.laplacian @ x)
        residual[seeds] = 0.0
        x += self._constrained(seeds, columns, np.zeros(len(seeds)), residual)  # 0 at S
        return x


class RandomWalkerSegmenter(BaseSegmenter):
    """Random-walker foreground probability as logits (see the module docstring).

    Parameters
    ----------
    max_side
        The image is downscaled so its longer side is at most this many pixels (>= 16).
    beta
        Edge-weight sharpness of ``skimage.segmentation.random_walker`` (> 0).
    mode
        Linear solver: ``bf`` (direct, default) or ``cg_j`` (Jacobi-preconditioned CG).
    """

    name = "random_walker"

    def __init__(self, max_side: int = 160, beta: float = 2000.0, mode: str = "bf") -> None:
        super().__init__()
        if not is_int(max_side) or max_side < 16:
            raise ValueError(f"random_walker max_side must be an int >= 16; got {max_side!r}")
        if (
            isinstance(beta, bool)
            or not isinstance(beta, numbers.Real)
            or not math.isfinite(beta)
            or not beta > 0
        ):
            raise ValueError(f"random_walker beta must be a finite number > 0; got {beta!r}")
        if not isinstance(mode, str) or mode not in MODES:
            raise ValueError(f"random_walker mode = {mode!r} is not one of {', '.join(MODES)}")
        self.max_side = int(max_side)
        self.beta = float(beta)
        self.mode = mode
        self._small: np.ndarray | None = None
        self._system: WalkerSystem | None = None
        self._warned_one_label = False
        identity = {
            "name": self.name,
            "max_side": self.max_side,
            "beta": self.beta,
            "mode": self.mode,
            "prob_eps": PROB_EPS,
            "algorithm_version": ALGORITHM_VERSION,
        }
        self._fingerprint = f"{stable_hash(json_dumps(identity)):016x}"

    @property
    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_type": None,
            "checkpoint": None,
            "checkpoint_md5": None,
            "max_side": self.max_side,
            "beta": self.beta,
            "mode": self.mode,
            "prob_eps": PROB_EPS,
            "logits_resize": "bilinear (Pillow) from the downscaled grid to 256",
            "fingerprint": self._fingerprint,
        }

    def _set_image(self, image_rgb: np.ndarray) -> None:
        height, width = image_rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        small_h, small_w = max(1, round(height * scale)), max(1, round(width * scale))
        image = Image.fromarray(image_rgb)
        if (small_h, small_w) != (height, width):
            image = image.resize((small_w, small_h), Image.Resampling.BILINEAR)
        small = np.asarray(image, dtype=np.float64) / 255.0
        if small.std() < 1e-8:
            # A constant image makes skimage divide 0 by 0 (it scales beta by the image's std);
            # a 1e-6 checkerboard keeps the weights ~uniform, which is what a flat image means.
            checker = (np.indices(small.shape[:2]).sum(axis=0) % 2)[..., None]
            small = small + 1e-6 * checker
        self._small = small
        self._system = None  # factorized on the first prompt set that needs it

    def _seed_labels(self, points_xy: np.ndarray, labels: np.ndarray) -> np.ndarray:
        assert self._small is not None
        height, width = self.image_hw
        small_h, small_w = self._small.shape[:2]
        cols = np.rint((points_xy[:, 0] + 0.5) * small_w / width - 0.5).astype(np.int64)
        rows = np.rint((points_xy[:, 1] + 0.5) * small_h / height - 0.5).astype(np.int64)
        cols, rows = np.clip(cols, 0, small_w - 1), np.clip(rows, 0, small_h - 1)
        seeds = np.zeros((small_h, small_w), dtype=np.int32)
        negative = labels == 0
        seeds[rows[negative], cols[negative]] = NEGATIVE_LABEL
        seeds[rows[~negative], cols[~negative]] = POSITIVE_LABEL  # positives win collisions
        return seeds

    def _foreground_probability(self, seeds: np.ndarray) -> np.ndarray:
        present = set(np.unique(seeds).tolist()) - {0}
        if present != {POSITIVE_LABEL, NEGATIVE_LABEL}:
            # Only one kind of seed survived on the small grid: every walker reaches it. Said
            # once per segmenter (an interactive first click is positive-only by design).
            log = LOGGER.debug if self._warned_one_label else LOGGER.warning
            log(
                "random_walker: only seed labels %s on the small grid, so p is constant (said "
                "once; every positive-only prompt set, e.g. a first click, gives p = 1)",
                sorted(present),
            )
            self._warned_one_label = True
            return np.full(seeds.shape, 1.0 if POSITIVE_LABEL in present else 0.0)
        if not (seeds == 0).any():
            return (seeds == POSITIVE_LABEL).astype(np.float64)
        if self.mode == "bf" and kept_columns(seeds.size) >= MIN_KEPT_COLUMNS:
            assert self._small is not None
            if self._system is None:
                self._system = WalkerSystem(graph_laplacian(self._small, self.beta))
            flat = np.flatnonzero(seeds)
            values = (seeds.ravel()[flat] == POSITIVE_LABEL).astype(np.float64)
            try:
                prob = self._system.probability(flat, values).reshape(seeds.shape)
                return np.clip(prob, 0.0, 1.0)
            except np.linalg.LinAlgError as error:  # never seen; scikit-image's solve instead
                LOGGER.warning("random_walker: %s in the kept factorization; solving afresh", error)
        from skimage.segmentation import random_walker

        with warnings.catch_warnings():
            # skimage warns when a probability exceeds [0, 1] by more than its tolerance;
            # we clip anyway.
            warnings.simplefilter("ignore", UserWarning)
            prob = random_walker(
                self._small,
                seeds,
                beta=self.beta,
                mode=self.mode,
                return_full_prob=True,
                channel_axis=-1,
            )
        return np.clip(prob[0], 0.0, 1.0)

    def _predict(self, points_xy: np.ndarray, labels: np.ndarray) -> Prediction:
        prob_small = self._foreground_probability(self._seed_labels(points_xy, labels))
        confidence = float(np.maximum(prob_small, 1.0 - prob_small).mean())
        prob_256 = _resize_float(prob_small, GRID_SIZE, GRID_SIZE)
        return probability_to_logits(prob_256), 0, [confidence]
