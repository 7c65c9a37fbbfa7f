"""NoImageHead: the prompt-aware refinement head that sits on a frozen base segmenter."""

from __future__ import annotations

import torch
from torch import nn


def as_head_layout(inputs: torch.Tensor) -> torch.Tensor:
    """``inputs`` in the memory format every head pass runs its convolutions in: channels-last
    for float32 and narrower, 2-3x faster than the default layout for these narrow 3x3
    convolutions on the CPU (oneDNN); float64 (the tuning pass) stays in the default layout,
    where channels-last is slower. The layouts round differently, so the module, the Jacobians'
    forward pass (:mod:`laplace_head.bayes.jacobian`) and training all go through here and
    agree bit for bit."""
    if inputs.dtype == torch.float64:
        return inputs
    return inputs.contiguous(memory_format=torch.channels_last)


class NoImageHead(nn.Module):
    """Refine base-segmenter logits given Gaussian prompt maps (and, as the image head, the
    image: ``channels_in`` 6; the class keeps the seed's name).

    Architecture (the Laplace stage relies on the names ``trunk`` and ``final_conv``)::

        [logits_256, pos_map, neg_map]  (B, 3, 256, 256)
        -> Conv(channels_in -> hidden, 3x3, pad 1) + ReLU
        -> Conv(hidden -> hidden, 3x3, pad 1) + ReLU          = trunk -> (B, hidden, H, W) features
        -> final_conv: Conv(hidden -> 1, 1x1)                  -> (B, 1, H, W) refined logits

    Parameters
    ----------
    channels_in
        Input channels: 3 (base logits, positive prompt map, negative prompt map) for the
        ``no_image`` head, 6 (those and the image's normalised R, G, B at the same grid) for
        the ``image`` head (:class:`~laplace_head.model.head_variant.HeadVariant`); the
        architecture, and so the 5x5 receptive field, is the same.
    hidden_channels
        Width of both 3x3 convolutions and the feature size seen by ``final_conv``.
    """

    def __init__(self, channels_in: int = 3, hidden_channels: int = 16) -> None:
        super().__init__()
        self.channels_in = channels_in
        self.hidden_channels = hidden_channels
        self.trunk = nn.Sequential(
            nn.Conv2d(channels_in, hidden_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.final_conv = nn.Conv2d(hidden_channels, 1, kernel_size=1)

    @property
    def constructor_args(self) -> dict[str, int]:
        """Arguments that rebuild this module (stored in every checkpoint)."""
        return {"channels_in": self.channels_in, "hidden_channels": self.hidden_channels}

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Per-pixel trunk features, (B, hidden, H, W), for inputs (B, channels_in, H, W)."""
        if inputs.ndim != 4 or inputs.shape[1] != self.channels_in:
            raise ValueError(
                f"NoImageHead expects inputs of shape (B, {self.channels_in}, H, W); "
                f"got {tuple(inputs.shape)}"
            )
        return self.trunk(as_head_layout(inputs))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Refined logits (B, 1, H, W) for inputs (B, channels_in, H, W)."""
        return self.final_conv(self.features(inputs))
