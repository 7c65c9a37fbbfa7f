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

For predictions on whole images, :class:`ImageJacobian` gives the all-layer factors of every
pixel already rotated into each block's curvature eigenbasis
(:mod:`laplace_head.bayes.curvature`), one band of rows at a time, using the conv structure:
patches are strided views of the image and the first conv's rank-9 factor reuses the rotated
input patches of the neighbours, so no per-pixel patch tensor of the whole image is formed.

Blocks come in laplace-torch's parameter order (``trunk.0.weight``, ``trunk.0.bias``,
``trunk.2.weight``, ``trunk.2.bias``, ``final_conv.weight``, ``final_conv.bias``; the last
layer alone is one block of weights then bias). The patch formulation of
:class:`~laplace_head.bayes.laplace_torch.PatchHead` (what laplace-torch fits) has the same
parameters and Jacobians; tests/unit/test_posterior_variants.py checks both against autograd.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from laplace_head.bayes.variant import TargetLayer
from laplace_head.model.head import NoImageHead, as_head_layout


@dataclass(frozen=True)
class JacobianFactors:
    """The per-pixel Jacobian of one parameter block, ``sum_r left[:, :, r] (x) right[:, :, r]``.

    ``left`` (N, out, r) and ``right`` (N, in, r), N = pixels (batch-major, then row-major).
    ``in_eigenbasis``: the factors are already ``Q_out^T left`` and ``Q_in^T right`` in the
    block's curvature eigenbasis (:class:`ImageJacobian`).
    """

    left: torch.Tensor
    right: torch.Tensor
    in_eigenbasis: bool = False

    def rows(self, index: torch.Tensor | slice) -> JacobianFactors:
        """The factors of the pixels ``index`` selects."""
        return JacobianFactors(self.left[index], self.right[index], self.in_eigenbasis)


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


def _forward(
    head: NoImageHead | torch.nn.Module,
    inputs: torch.Tensor,
    inside: torch.Tensor | None,
    keep_pre: bool = True,
) -> tuple[torch.Tensor, ...]:
    """The head's forward pass, keeping what the Jacobians need: the first conv's output
    (times ``inside``), the second conv's pre-activation, the features and the logits (B, H, W).

    In the channels-last memory format, as :meth:`NoImageHead.features` runs it (the same
    numbers bit for bit; :func:`~laplace_head.model.head.as_head_layout`). The ReLUs run in
    place on the convolutions' fresh outputs; with ``keep_pre`` False the second one overwrites
    the pre-activation, returned as None (one (B, hidden, H, W) buffer less per pass)."""
    conv1, conv2, final = head.trunk[0], head.trunk[2], head.final_conv
    hidden1 = F.conv2d(as_head_layout(inputs), conv1.weight, conv1.bias, padding=1).relu_()
    if inside is not None:
        hidden1 = hidden1 * inside  # 0 outside the image
    pre2 = F.conv2d(hidden1, conv2.weight, conv2.bias, padding=1)
    features = F.relu(pre2) if keep_pre else pre2.relu_()
    return hidden1, pre2 if keep_pre else None, features, final(features)[:, 0]


def _active(values: torch.Tensor) -> torch.Tensor:
    """ReLU's derivative: 1 where ``values > 0``, else 0, in their dtype (of ``pre2``: the
    second conv's; of ``hidden1 = relu(pre1) * inside``: the first conv's times ``inside``)."""
    return (values > 0).to(values.dtype)


@torch.no_grad()
def head_logits(head: NoImageHead | torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The head's MAP logits (B, H, W): the forward pass of :func:`jacobian_factors` and
    :class:`ImageJacobian` alone, so the three agree bit for bit."""
    return _forward(head, inputs, None, keep_pre=False)[-1]


@torch.no_grad()
def head_features_and_logits(
    head: NoImageHead | torch.nn.Module, inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward pass of :func:`head_logits`, keeping the features (B, hidden, H, W) that
    :func:`last_layer_factors` turns into the last layer's Jacobian: (features, logits)."""
    _, _, features, logits = _forward(head, inputs, None, keep_pre=False)
    return features, logits


def last_layer_factors(features: torch.Tensor) -> list[JacobianFactors]:
    """The last layer's per-pixel Jacobian factors from the head's features (B, hidden, H, W):
    the logit is linear in the final 1x1 conv, so a pixel's Jacobian is its features and a 1
    for the bias (one block, ``(hidden + 1)`` wide)."""
    phi = _pixels(features)
    n = phi.shape[0]
    right = torch.cat([phi, phi.new_ones(n, 1)], dim=1).unsqueeze(-1)
    return [JacobianFactors(phi.new_ones(n, 1, 1), right)]


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
    conv2, final = head.trunk[2], head.final_conv
    hidden1, pre2, features, logits = _forward(head, inputs, inside)
    if TargetLayer(layer) is TargetLayer.FINAL_CONV:
        return logits, last_layer_factors(features)
    n = features.shape[0] * features.shape[2] * features.shape[3]
    ones = features.new_ones(n, 1, 1)
    phi = _pixels(features)
    hidden = conv2.out_channels
    g2 = _pixels(_active(pre2) * final.weight.reshape(1, hidden, 1, 1))
    h1_patch = _pixels(F.unfold(hidden1, 3, padding=1))  # (N, hidden * 9), (c, d) order
    active1 = _pixels(F.unfold(_active(hidden1), 3, padding=1))
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


Rotation = tuple[torch.Tensor | None, torch.Tensor | None]


def _rotate(factor: torch.Tensor, rotation: torch.Tensor | None) -> torch.Tensor:
    """``Q^T`` applied to every pixel's vector: ``factor @ Q`` over the last axis."""
    return factor if rotation is None else factor @ rotation


def _windows(padded: torch.Tensor, rows: slice) -> torch.Tensor:
    """The 3x3 windows around the pixels of ``rows`` in a zero-padded channels-last
    (B, H + 2, W + 2, K) image, as a view (B, rows, W, K, 3, 3) (``F.unfold``'s (c, d) order
    when flattened)."""
    band = padded[:, rows.start : rows.stop + 2]
    return band.unfold(1, 3, 1).unfold(2, 3, 1)


def _channels_last(image: torch.Tensor, pad: bool = False) -> torch.Tensor:
    """(B, K, H, W) -> contiguous (B, H, W, K), zero-padded by one pixel when ``pad``."""
    if pad:
        image = F.pad(image, (1, 1, 1, 1))
    return image.permute(0, 2, 3, 1).contiguous()


class ImageJacobian:
    """The all-layer Jacobian factors of every pixel of (B, C, H, W) head inputs, already in
    the blocks' eigenbases, one band of rows at a time.

    The constructor runs the forward pass (:attr:`logits`, (B, H, W)) and rotates every input
    patch once (C * 9 numbers per pixel); :meth:`factors` then gives the
    :class:`JacobianFactors` of a band of rows, small enough to stay in cache. ``rotations``
    are the ``(Q_out, Q_in)`` of the six all-layer blocks (None: the identity), in
    :func:`block_shapes` order. The factors equal those of :func:`jacobian_factors`
    (``inside`` None) rotated by the blocks' ``Q^T``, built from the conv structure: a band's
    3x3 patches are strided views of the zero-padded image, rotated by one matrix product; the
    first conv's rank-9 right factor is the rotated input patch read at the 9 hidden positions
    around each pixel. (Matrix products rather than convolutions with rotated kernels: cuDNN
    runs float32 convolutions in TF32 by default, too coarse for the 1e-6 the variance keeps.)
    """

    def __init__(
        self, head: NoImageHead, inputs: torch.Tensor, rotations: Sequence[Rotation]
    ) -> None:
        if len(rotations) != 6:
            raise ValueError(
                f"ImageJacobian needs the rotations of the 6 all-layer blocks; got "
                f"{len(rotations)} (the last layer's factors come from jacobian_factors)"
            )
        self.rotations = list(rotations)
        hidden1, pre2, features, self.logits = _forward(head, inputs, None)
        conv2, final = head.trunk[2], head.final_conv
        hidden = conv2.out_channels
        # W2 as (o, (d, c)): sum_o g2_o W2[o, c, d] for every pixel is one matrix product
        self._conv2 = conv2.weight.permute(0, 2, 3, 1).reshape(hidden, -1)
        self._g2 = _channels_last(_active(pre2) * final.weight.view(1, -1, 1, 1))
        self._features = _channels_last(features)
        self._mask = _channels_last(_active(hidden1), pad=True)
        # every pixel's input patch in unfold's (c, k) order, rotated: (B, H, W, C * 9)
        patches = F.unfold(inputs, 3, padding=1).reshape(inputs.shape[0], -1, *pre2.shape[2:])
        patches = _rotate(patches.permute(0, 2, 3, 1), self.rotations[0][1])
        self._input_patches = F.pad(patches, (0, 0, 1, 1, 1, 1)).contiguous()
        self._hidden1 = _channels_last(hidden1, pad=True)
        # Q_in of the second conv with its rows in (d, c) order, the order in which a band's
        # windows are gathered fastest (runs of ``hidden`` contiguous numbers)
        in2 = self.rotations[2][1]
        self._hidden_rotation = None
        if in2 is not None:
            self._hidden_rotation = (
                in2.reshape(hidden, 9, -1).transpose(0, 1).reshape(9 * hidden, -1)
            )

    @property
    def height(self) -> int:
        return self.logits.shape[1]

    def factors(self, start: int, stop: int) -> list[JacobianFactors]:
        """The factors of the pixels in rows ``start:stop`` of every image (N = B * rows * W,
        batch-major, then row-major), flagged ``in_eigenbasis``."""
        (out1, _), (out1b, in1b), (out2, _), (out2b, in2b), (out3, in3), (out3b, in3b) = (
            self.rotations
        )
        rows = slice(start, stop)
        pixels = self._g2[:, rows].shape[:3]  # (B, rows, W)
        g2 = self._g2[:, rows].reshape(-1, self._g2.shape[-1])  # (N, hidden)
        n, hidden = g2.shape
        ones = g2.new_ones(1, 1).expand(n, 1)
        # g1(u, d) = relu'(pre1(u + d)) * sum_o g2_o(u) W2[o, :, d], as (N, 9, hidden)
        back = (g2 @ self._conv2).view(*pixels, 3, 3, hidden)
        g1 = (back * _windows(self._mask, rows).permute(0, 1, 2, 4, 5, 3)).view(n, 9, hidden)
        # the (rotated) input patch of u + d at the 9 hidden offsets d, as (N, 9, C * 9)
        around = _windows(self._input_patches, rows).permute(0, 1, 2, 4, 5, 3).reshape(n, 9, -1)
        # the hidden layer's patch of u, rotated: (N, hidden * 9)
        patches = _windows(self._hidden1, rows).permute(0, 1, 2, 4, 5, 3).reshape(n, 9, hidden)
        if self._hidden_rotation is None:  # the patch itself, in unfold's (c, d) order
            patches = patches.transpose(1, 2).reshape(n, -1)
        else:
            patches = patches.reshape(n, -1) @ self._hidden_rotation
        phi = self._features[:, rows].reshape(n, -1)
        pairs = [
            (_rotate(g1, out1).transpose(1, 2), around.transpose(1, 2)),
            (_rotate(g1.sum(1), out1b), _rotate(ones, in1b)),
            (_rotate(g2, out2), patches),
            (_rotate(g2, out2b), _rotate(ones, in2b)),
            (_rotate(ones, out3), _rotate(phi, in3)),
            (_rotate(ones, out3b), _rotate(ones, in3b)),
        ]
        return [
            JacobianFactors(
                left if left.ndim == 3 else left.unsqueeze(-1),
                right if right.ndim == 3 else right.unsqueeze(-1),
                in_eigenbasis=True,
            )
            for left, right in pairs
        ]
