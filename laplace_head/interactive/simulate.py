"""Simulated interactive segmentation of one image: RITM first click, then a policy's clicks.

:func:`simulate_clicks` is the per-(image, policy) unit of stage 8 (``interactive/shard.py``):

1. The ground truth is resized to the 256 grid (nearest neighbour,
   :func:`~laplace_head.dataset.images.resize_mask_nearest`); all clicks, labels and IoUs live
   on that grid.
2. Click 1 is :func:`~laplace_head.interactive.clicks.first_click` (positive), the same for
   every policy.
3. Clicks 2..``max_clicks`` come from the policy (:data:`~laplace_head.interactive.clicks
   .POLICIES`) on the head's current maps; the simulated user labels each by the grid ground
   truth at its cell (for the oracle this is the oracle's own label). Only ground-truth policies
   (the oracle) see the ground truth. A click goes to the predictor at its cell centre in image
   pixels (:func:`~laplace_head.interactive.clicks.grid_to_image`) through a
   :class:`~laplace_head.interactive.session.ClickSession`, as an annotator's clicks do. The
   oracle lives here, not in the predictor: the policy's state is the predictor's
   (:meth:`~laplace_head.interactive.predictor.InteractivePredictor.click_state`) plus, for a
   ground-truth policy only, the grid ground truth. A look-ahead policy (``bald_lookahead``)
   may re-predict with one extra click; that leaves the session's history as it is.
4. After every click: the IoU of the base mask (``base_logits > 0``) and of the head mask
   (``map_probability > 0.5``) with the grid ground truth, the click, and ``no_error`` -
   whether the oracle finds no unclicked error pixel of the head mask left.

The simulation stops early when the policy has nothing to click (``stop_reason``:
``no_error`` for the oracle on a perfect head mask, ``no_clickable_cell`` otherwise); the IoU
lists then have fewer than ``max_clicks`` entries and the masks would not change without a
click, so consumers carry the last IoU forward. The result is a stage-8 record
(:func:`~laplace_head.interactive.records.click_record`). Random draws come from
:func:`~laplace_head.interactive.clicks.click_rng` (seed, sample id, policy, click index):
the result depends on nothing else (not on the order of samples or policies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from laplace_head.dataset.images import resize_mask_nearest
from laplace_head.interactive.clicks import (
    Cell,
    click_rng,
    first_click,
    get_policy,
    grid_to_image,
    oracle_click,
    reads_ground_truth,
    reads_posterior,
)
from laplace_head.interactive.predictor import InteractivePrediction, InteractivePredictor
from laplace_head.interactive.records import click_entry, click_record
from laplace_head.interactive.session import ClickSession
from laplace_head.settings import GRID_SIZE


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


@dataclass
class _Trace:
    """What the simulation records after each click."""

    clicks: list[dict[str, Any]] = field(default_factory=list)
    clicked: set[Cell] = field(default_factory=set)
    iou_base: list[float] = field(default_factory=list)
    iou_head: list[float] = field(default_factory=list)
    no_error: list[bool] = field(default_factory=list)

    def add(self, cell: Cell, x: float, y: float, label: int, prediction, gt_256) -> None:
        head_mask = prediction.map_probability > 0.5
        self.clicked.add(cell)
        self.clicks.append(click_entry(x, y, label, cell))
        self.iou_base.append(mask_iou(prediction.base_logits > 0, gt_256))
        self.iou_head.append(mask_iou(head_mask, gt_256))
        self.no_error.append(oracle_click(head_mask, gt_256, self.clicked) is None)


def _grid_ground_truth(image_rgb: np.ndarray, gt_mask: np.ndarray) -> np.ndarray:
    gt = np.asarray(gt_mask).astype(bool)
    if gt.shape != image_rgb.shape[:2]:
        raise ValueError(f"gt_mask {gt.shape} does not match the image {image_rgb.shape[:2]}")
    return resize_mask_nearest(gt, GRID_SIZE, GRID_SIZE)


def _policy_cell(
    predictor: InteractivePredictor,
    prediction: InteractivePrediction,
    policy: str,
    clicked: set[Cell],
    gt_256: np.ndarray | None,
    rng: np.random.Generator,
) -> Cell | None:
    """The policy's next cell after ``prediction`` (``gt_256`` only for ground-truth policies;
    the posterior maps only for the policies that read them)."""
    state = predictor.click_state(prediction, posterior=reads_posterior(policy))
    state.clicked = set(clicked)
    state.gt = gt_256
    return get_policy(policy)(state, rng)


def simulate_clicks(
    predictor: InteractivePredictor,
    image_rgb: np.ndarray,
    gt_mask: np.ndarray,
    policy: str,
    max_clicks: int,
    seed: int,
    sample_id: str,
) -> dict[str, Any]:
    """Simulate up to ``max_clicks`` clicks of ``policy`` on one image (module docstring).

    Parameters
    ----------
    predictor
        The interactive predictor; its image is set here (a no-op for the encoder when the same
        image is already set).
    image_rgb
        (H, W, 3) uint8 RGB image.
    gt_mask
        (H, W) bool ground truth at the image's size.
    policy
        A registered policy name.
    max_clicks
        Clicks to simulate, >= 1 (the first click included).
    seed, sample_id
        Seed the policy's random draws (with the policy name and the click index).

    Returns
    -------
    dict
        The stage-8 record without its class
        (:func:`~laplace_head.interactive.records.click_record`): JSON-serialisable.

    Raises
    ------
    ValueError
        For an unknown policy, ``max_clicks < 1``, a mask not of the image's size or a ground
        truth without foreground on the grid.
    """
    get_policy(policy)  # ValueError for an unknown policy, before any decoding
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1; got {max_clicks}")
    image_rgb = np.asarray(image_rgb)
    gt_256 = _grid_ground_truth(image_rgb, gt_mask)
    cell = first_click(gt_256)  # ValueError for an empty ground truth, before any encoding
    session = ClickSession(predictor, image_rgb)
    image_hw = (int(image_rgb.shape[0]), int(image_rgb.shape[1]))
    policy_gt = gt_256 if reads_ground_truth(policy) else None
    trace = _Trace()
    stop_reason: str | None = None
    for index in range(max_clicks):
        if index:
            rng = click_rng(seed, sample_id, policy, index)
            next_cell = _policy_cell(
                predictor, session.predict(), policy, trace.clicked, policy_gt, rng
            )
            if next_cell is None:
                stop_reason = "no_error" if trace.no_error[-1] else "no_clickable_cell"
                break
            cell = next_cell
        label = int(gt_256[cell])
        x, y = grid_to_image(cell[0], cell[1], image_hw)
        session.add_click(x, y, label)
        trace.add(cell, x, y, label, session.predict(), gt_256)
    return click_record(
        sample_id,
        policy,
        seed,
        max_clicks,
        image_hw,
        trace.clicks,
        trace.iou_base,
        trace.iou_head,
        trace.no_error,
        stop_reason,
    )
