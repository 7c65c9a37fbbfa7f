"""Per-pixel Jacobians of the head's logit, in the low-rank form every posterior variant uses.

The head (:class:`~laplace_head.model.head.NoImageHead`) is fully convolutional with a 5x5
receptive field: conv1 3x3 -> ReLU -> conv2 3x3 -> ReLU -> final 1x1 conv, both 3x3 convs
zero-padded. The logit of pixel ``u`` is therefore a function of the 5x5 input patch around
``u`` alone, and its gradient with respect to every parameter has a closed form. For one
parameter block (a weight tensor seen as an (out, in) matrix, or a bias as (out, 1)) the
Jacobian of pixel ``u`` is a sum of a few outer products::

    J_block(u) = sum_r left[u, :, r] (x) right[u, :, r]        (out x in)

* final_conv (last layer): ``left = 1``, ``right = [phi(u), 1]`` (the C trunk features and the
  bias' constant 1), one (1, C + 1) block;
* conv2 (out = in_ch = C, in = C * 9): ``left = g2(u)``, ``right = h1 patch around u`` with
  ``g2 = w_final * relu'(pre2)`` (rank 1);
* conv1 (out = C, in = 3 * 9): ``left = g1(u, d)``, ``right = input patch around u + d`` for the
  9 hidden positions ``d`` of the 3x3 neighbourhood (rank 9), where
  ``g1(u, d) = relu'(pre1(u + d)) * sum_o g2_o(u) W2[o, :, d]`` and hidden positions outside the
  image contribute 0 (the head zero-pads its hidden layer);
* biases: ``right = 1`` and ``left`` the same sums (conv1: summed over ``d``).

Blocks come in laplace-torch's parameter order (``trunk.0.weight``, ``trunk.0.bias``,
``trunk.2.weight``, ``trunk.2.bias``, ``final_conv.weight``, ``final_conv.bias``; the last
layer alone is one block of weights then bias). The patch formulation of
:class:`~laplace_head.bayes.laplace_torch.PatchHead` (what laplace-torch fits) has the same
parameters and Jacobians; tests/unit/test_posterior_variants.py checks both against autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from laplace_head.bayes.variant import TargetLayer
from laplace_head.model.head import NoImageHead


@dataclass(frozen=True)
class JacobianFactors:
    """The per-pixel Jacobian of one parameter block, ``sum_r left[:, :, r] (x) right[:, :, r]``.

    ``left`` (N, out, r) and ``right`` (N, in, r), N = pixels (batch-major, then row-major).
    """

    left: torch.Tensor
    right: torch.Tensor

    def rows(self, index: torch.Tensor | slice) -> JacobianFactors:
        """The factors of the pixels ``index`` selects."""
        return JacobianFactors(self.left[index], self.right[index])


def block_shapes(head: NoImageHead, layer: TargetLayer | str) -> list[tuple[str, int, int]]:
    """(name, out, in) of every parameter block the posterior of ``layer`` covers, in
    laplace-torch order."""
    hidden, channels = head.hidden_channels, head.channels_in
    if TargetLayer(layer) is TargetLayer.FINAL_CONV:
        return [("final_conv", 1, hidden + 1)]
    return [
        ("trunk.0.weight", hidden, channels * 9),
        ("trunk.0.bias", hidden, 1),
        ("trunk.2.weight", hidden, hidden * 9),
        ("trunk.2.bias", hidden, 1),
        ("final_conv.weight", 1, hidden),
        ("final_conv.bias", 1, 1),
    ]


def parameter_vector(head: NoImageHead, layer: TargetLayer | str) -> torch.Tensor:
    """The MAP parameters the posterior of ``layer`` covers as one vector, in the blocks' order."""
    if TargetLayer(layer) is TargetLayer.FINAL_CONV:
        conv = head.final_conv
        return torch.cat([conv.weight.detach().reshape(-1), conv.bias.detach().reshape(-1)])
    return torch.cat([p.detach().reshape(-1) for p in head.parameters()])


def _pixels(tensor: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) or (B, K, H*W) -> (B*H*W, K)."""
    return tensor.flatten(2).transpose(1, 2).reshape(-1, tensor.shape[1])


@torch.no_grad()
def jacobian_factors(
    head: NoImageHead | torch.nn.Module,
    inputs: torch.Tensor,
    layer: TargetLayer | str,
    inside: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[JacobianFactors]]:
    """MAP logits (B, H, W) and the per-pixel Jacobian factors of every block of ``layer``.

    ``inputs`` are the head's (B, channels_in, H, W) inputs (logits already clipped). ``head``
    is a :class:`NoImageHead` or a :class:`~laplace_head.bayes.laplace_torch.PatchHead` (the same
    parameters; both 3x3 convs are applied with zero padding 1 here). ``inside`` (B, 1, H, W),
    1 inside the image and 0 outside, multiplies the first conv's output as the patch model
    does (patches of border pixels); None means every position is inside.
    """
    conv1, conv2, final = head.trunk[0], head.trunk[2], head.final_conv
    pre1 = F.conv2d(inputs, conv1.weight, conv1.bias, padding=1)
    mask = (pre1 > 0).to(inputs.dtype)
    if inside is not None:
        mask = mask * inside
    hidden1 = pre1 * mask  # relu, and 0 outside the image
    pre2 = F.conv2d(hidden1, conv2.weight, conv2.bias, padding=1)
    features = F.relu(pre2)
    logits = final(features)[:, 0]
    n = features.shape[0] * features.shape[2] * features.shape[3]
    ones = features.new_ones(n, 1, 1)
    phi = _pixels(features)
    if TargetLayer(layer) is TargetLayer.FINAL_CONV:
        right = torch.cat([phi, phi.new_ones(n, 1)], dim=1).unsqueeze(-1)
        return logits, [JacobianFactors(ones, right)]
    hidden = conv2.out_channels
    g2 = _pixels((pre2 > 0).to(features.dtype) * final.weight.reshape(1, hidden, 1, 1))
    h1_patch = _pixels(F.unfold(hidden1, 3, padding=1))  # (N, hidden * 9), (c, d) order
    active1 = _pixels(F.unfold(mask, 3, padding=1))
    back = torch.einsum("no,ocd->ncd", g2, conv2.weight.reshape(hidden, hidden, 9))
    g1 = back * active1.reshape(n, hidden, 9)  # (N, hidden, 9); 0 outside the image
    patches = F.unfold(inputs, 3, padding=1)  # (B, channels * 9, H * W)
    patches = patches.reshape(inputs.shape[0], -1, *inputs.shape[2:])
    around = _pixels(F.unfold(patches, 3, padding=1)).reshape(n, -1, 9)  # (N, ch * 9, 9)
    return logits, [
        JacobianFactors(g1, around),
        JacobianFactors(g1.sum(-1, keepdim=True), ones),
        JacobianFactors(g2.unsqueeze(-1), h1_patch.unsqueeze(-1)),
        JacobianFactors(g2.unsqueeze(-1), ones),
        JacobianFactors(ones, phi.unsqueeze(-1)),
        JacobianFactors(ones, ones),
    ]
