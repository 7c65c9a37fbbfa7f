"""IoU / Dice against hand-computed values and the per-image averaging convention."""

import pytest
import torch

from laplace_head.model.metrics import (
    SegmentationMeter,
    base_segmenter_iou,
    per_image_dice,
    per_image_iou,
)


def _image(values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 2, 2)


def test_iou_and_dice_hand_computed():
    logits = _image([1.0, -1.0, 1.0, -1.0])  # predicted: left column
    target = _image([1, 1, 0, 0])  # truth: top row
    # intersection 1, union 3, |P| + |T| = 4
    assert per_image_iou(logits, target).tolist() == pytest.approx([1 / 3])
    assert per_image_dice(logits, target).tolist() == pytest.approx([0.5])


def test_threshold_is_strictly_positive_logit():
    logits = _image([0.0, 0.0, 0.0, 1e-3])
    target = _image([1, 0, 0, 1])
    # only the last pixel is foreground: intersection 1, union 2
    assert per_image_iou(logits, target).item() == pytest.approx(0.5)


def test_both_empty_scores_one():
    logits = torch.full((1, 1, 2, 2), -5.0)
    target = torch.zeros(1, 1, 2, 2)
    assert per_image_iou(logits, target).item() == 1.0
    assert per_image_dice(logits, target).item() == 1.0


def test_meter_averages_per_image_and_weights_loss_by_batch_size():
    meter = SegmentationMeter()
    meter.update(_image([1.0, -1.0, 1.0, -1.0]), _image([1, 1, 0, 0]), loss=0.4)  # IoU 1/3
    perfect = torch.cat([_image([5.0, -5.0, -5.0, -5.0])] * 3)
    meter.update(perfect, torch.cat([_image([1, 0, 0, 0])] * 3), loss=0.2)  # IoU 1 each
    assert meter.count == 4
    assert meter.iou == pytest.approx((1 / 3 + 3) / 4)
    assert meter.dice == pytest.approx((0.5 + 3) / 4)
    assert meter.loss == pytest.approx((0.4 + 3 * 0.2) / 4)


def test_empty_meter_is_nan_and_shape_mismatch_raises():
    assert SegmentationMeter().iou != SegmentationMeter().iou  # nan
    with pytest.raises(ValueError, match="same shape"):
        per_image_iou(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))


def test_base_segmenter_iou_thresholds_base_logits():
    base_logits = _image([3.0, 2.0, -4.0, -1.0])
    target = _image([1, 0, 0, 0])
    assert base_segmenter_iou(base_logits, target).item() == pytest.approx(0.5)
