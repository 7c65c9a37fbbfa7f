"""Training loss of the head: BCE-with-logits plus a weighted soft Dice term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DICE_SMOOTH = 1.0


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = DICE_SMOOTH
) -> torch.Tensor:
    """Soft Dice loss, computed per image and averaged over the batch.

    ``1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)`` with ``p = sigmoid(logits)``,
    sums over each image's pixels. Per image (not pooled over the batch) so that a small object
    weighs as much as a large one, matching the per-image IoU used for model selection. The
    ``smooth`` term keeps the loss finite (0) for an empty prediction on an empty target.

    Parameters
    ----------
    logits
        (B, 1, H, W) raw logits (any float dtype; computed in float32).
    target
        (B, 1, H, W) float {0, 1} ground truth.

    Returns
    -------
    torch.Tensor
        Scalar float32 loss in [0, 1].
    """
    probs = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    intersection = (probs * target).sum(dim=1)
    total = probs.sum(dim=1) + target.sum(dim=1)
    dice = (2.0 * intersection + smooth) / (total + smooth)
    return (1.0 - dice).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, dice_lambda: float) -> torch.Tensor:
    """``BCE-with-logits (mean over all pixels) + dice_lambda * soft Dice`` (scalar float32).

    Shapes as in :func:`soft_dice_loss`. The loss is always evaluated in float32, also under
    fp16 autocast, because the pixel sums of the Dice term overflow half precision.
    """
    logits = logits.float()
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return bce + dice_lambda * soft_dice_loss(logits, target)


class BceDiceLoss(nn.Module):
    """Module form of :func:`bce_dice_loss` (``loss = BCE + dice_lambda * soft Dice``)."""

    def __init__(self, dice_lambda: float = 0.5) -> None:
        super().__init__()
        if dice_lambda < 0:
            raise ValueError(f"dice_lambda must be >= 0; got {dice_lambda}")
        self.dice_lambda = dice_lambda

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return bce_dice_loss(logits, target, self.dice_lambda)
