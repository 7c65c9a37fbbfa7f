"""IoU and Dice of thresholded logits, and their running means over a split.

Convention (used for model selection, the summary and the README): a pixel is foreground when
its logit is > 0 (probability > 0.5). IoU and Dice are computed **per image** (per prompt set)
and then averaged over images - the mean IoU of interactive segmentation, where a small object
weighs as much as a large one. A pooled (all pixels of the split at once) IoU would be dominated
by large objects. An image whose prediction and ground truth are both empty scores 1.
The base segmenter's IoU uses the same rule on its own logits (``logits_256 > 0``), so the two
numbers are directly comparable.
"""

from __future__ import annotations

import torch


def _masks(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.shape != target.shape:
        raise ValueError(
            f"logits and target must have the same shape; got {tuple(logits.shape)} "
            f"and {tuple(target.shape)}"
        )
    return (logits > 0).flatten(1), (target > 0.5).flatten(1)


def per_image_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` against ``target``, one value per image.

    Parameters
    ----------
    logits
        (B, 1, H, W) or (B, H, W) logits.
    target
        Same shape, {0, 1} ground truth (any dtype).

    Returns
    -------
    torch.Tensor
        (B,) float32 IoU in [0, 1]; 1 where prediction and target are both empty.
    """
    pred, truth = _masks(logits, target)
    intersection = (pred & truth).sum(dim=1).float()
    union = (pred | truth).sum(dim=1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def per_image_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice (F1) of ``logits > 0`` against ``target``, one value per image, (B,) float32.

    ``2|P & T| / (|P| + |T|)``; 1 where both are empty. Shapes as in :func:`per_image_iou`.
    """
    pred, truth = _masks(logits, target)
    intersection = (pred & truth).sum(dim=1).float()
    total = pred.sum(dim=1).float() + truth.sum(dim=1).float()
    return torch.where(total > 0, 2 * intersection / total.clamp(min=1), torch.ones_like(total))


class SegmentationMeter:
    """Running per-image means of IoU and Dice (and of a loss, weighted by batch size)."""

    def __init__(self) -> None:
        self.count = 0
        self.iou_sum = 0.0
        self.dice_sum = 0.0
        self.loss_sum = 0.0

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: float | None = None) -> None:
        """Add a batch: (B, 1, H, W) logits and targets; ``loss`` is the batch's mean loss."""
        batch = logits.shape[0]
        self.iou_sum += float(per_image_iou(logits, target).sum())
        self.dice_sum += float(per_image_dice(logits, target).sum())
        if loss is not None:
            self.loss_sum += float(loss) * batch
        self.count += batch

    def _mean(self, total: float) -> float:
        return total / self.count if self.count else float("nan")

    @property
    def iou(self) -> float:
        return self._mean(self.iou_sum)

    @property
    def dice(self) -> float:
        return self._mean(self.dice_sum)

    @property
    def loss(self) -> float:
        return self._mean(self.loss_sum)


def base_segmenter_iou(logits_256: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of the base segmenter's own mask ``logits_256 > 0``, (B,) float32.

    Clipping the logits to ±logit_clip does not change their sign, so the clipped input
    channel 0 of the head gives the same value as the raw logits.
    """
    return per_image_iou(logits_256, target)
