"""Loss values against hand-computed numbers."""

import math

import pytest
import torch
import torch.nn.functional as F

from laplace_head.model.losses import BceDiceLoss, bce_dice_loss, soft_dice_loss


def _image(values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 2, 2)


def test_uniform_half_probability_matches_hand_computation():
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere
    target = _image([1, 0, 0, 0])
    # Dice: (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5 -> loss 0.5; BCE = ln 2 on every pixel.
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.5)
    assert bce_dice_loss(logits, target, dice_lambda=0.5).item() == pytest.approx(
        math.log(2) + 0.25, rel=1e-6
    )


def test_dice_is_averaged_per_image_not_pooled():
    logits = torch.full((2, 1, 2, 2), 100.0)  # p = 1 everywhere
    target = torch.cat([_image([1, 1, 1, 1]), _image([1, 0, 0, 0])])
    # image 1: (8 + 1) / (8 + 1) = 1 -> 0; image 2: (2 + 1) / (4 + 1 + 1) = 0.5 -> 0.5.
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.25, abs=1e-6)
    # the pooled value would be 1 - 11 / 14 = 0.214...
    assert soft_dice_loss(logits, target).item() != pytest.approx(1 - 11 / 14, abs=1e-3)


def test_dice_lambda_zero_is_plain_bce_and_module_matches_function():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=generator)
    target = (torch.rand(3, 1, 8, 8, generator=generator) > 0.5).float()
    expected = F.binary_cross_entropy_with_logits(logits, target)
    assert bce_dice_loss(logits, target, 0.0).item() == pytest.approx(expected.item())
    assert BceDiceLoss(0.7)(logits, target).item() == pytest.approx(
        bce_dice_loss(logits, target, 0.7).item()
    )


def test_half_precision_logits_give_float32_finite_loss_and_gradients():
    logits = torch.randn(2, 1, 256, 256).half().requires_grad_()
    target = (torch.rand(2, 1, 256, 256) > 0.5).float()
    loss = bce_dice_loss(logits, target, 0.5)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_negative_dice_lambda_is_rejected():
    with pytest.raises(ValueError, match="dice_lambda"):
        BceDiceLoss(-1.0)
