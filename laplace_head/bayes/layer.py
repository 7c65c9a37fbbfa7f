"""The laplace-torch model of stage 6: the final conv as a per-pixel two-logit linear layer.

The final 1x1 conv is a C -> 1 linear map applied to every pixel's trunk features, so each
pixel is one Bernoulli observation. :class:`PixelBernoulliLayer` wraps that map to emit two
logits ``[0, z]``: laplace-torch's ``classification`` likelihood (softmax + cross-entropy) then
*is* the per-pixel Bernoulli, since ``softmax([0, z])[1] = sigmoid(z)``. Never flatten the
pixels of an image into one N-way softmax - that is a different, wrong model.

The posterior is ``Laplace(layer, "classification", subset_of_weights="all",
hessian_structure="diag", backend=AsdlGGN)``: AsdlGGN computes the exact GGN diagonal
``sum_pixels p(1-p) phi_i^2`` batch by batch (the default Curvlinops backend would allocate
(rows x outputs)^2 Jacobians). The layer runs in float64, so the accumulated curvature is exact
to ~1e-12 relative whatever the number of pixels.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import IterableDataset
from tqdm import tqdm

from laplace_head.cache.split_h5 import iter_split_batches, split_num_rows
from laplace_head.model.head import NoImageHead
from laplace_head.util.seeding import derive_seed

BACKEND_NAME = "AsdlGGN"  # the seed's last-layer diagonal (exact GGN diagonal, cheap)
# Every other variant: curvlinops' GGN. (AsdlGGN's diagonal of the first conv of the patch model
# disagreed with the exact GGN diagonal; CurvlinopsGGN agrees.)
CURVLINOPS_BACKEND_NAME = "CurvlinopsGGN"
# The all-layer diagonal: CurvlinopsGGN's diag builds per-pixel Jacobians by autograd, ~70 ms a
# pixel on 2 CPU cores (hours for 200k pixels); PatchDiagonalGGN is the same GGN diagonal from
# the closed-form Jacobians of bayes.jacobian (tests/unit/test_posterior_variants.py checks it
# against CurvlinopsGGN), ~1000x faster.
PATCH_DIAGONAL_BACKEND_NAME = "PatchDiagonalGGN"
#: laplace-torch's ``hessian_structure`` of each of this package's approximations.
HESSIAN_STRUCTURES = {"diagonal": "diag", "full": "full", "kron": "kron"}
# asdl (imported by laplace-torch) decorates functions with torch.jit.script at import time.
ASDL_IMPORT_WARNING = r"`torch\.jit\.script` is deprecated"
# asdl registers module backward hooks that torch flags while fitting; the GGN is unaffected.
ASDL_HOOK_WARNING = r"Using a non-full backward hook when the forward contains multiple"


def import_laplace() -> tuple[Any, Any]:
    """Import laplace-torch and its AsdlGGN backend, filtering only asdl's jit FutureWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ASDL_IMPORT_WARNING, category=FutureWarning)
        import laplace
        from laplace.curvature import AsdlGGN
    return laplace, AsdlGGN


def backend_name(target_layer: str, approx: str) -> str:
    """The laplace-torch curvature backend of a variant (see the constants above)."""
    if approx == "diagonal":
        return BACKEND_NAME if target_layer == "final_conv" else PATCH_DIAGONAL_BACKEND_NAME
    return CURVLINOPS_BACKEND_NAME


@functools.cache
def _patch_diagonal_ggn() -> type:
    """laplace-torch's CurvlinopsGGN with the exact GGN diagonal of a :class:`PatchHead`
    computed in closed form (Bernoulli GGN: ``sum_u p_u (1 - p_u) J_u^2``)."""
    from laplace.curvature import CurvlinopsGGN

    from laplace_head.bayes.jacobian import jacobian_factors

    class PatchDiagonalGGN(CurvlinopsGGN):
        def diag(self, x: torch.Tensor, y: torch.Tensor, **kwargs: Any):
            centre = (x.shape[-2] // 2, x.shape[-1] // 2)
            logits, factors = jacobian_factors(self.model, x[:, :-1], "all_layers", x[:, -1:])
            n_pixels = x.shape[-2] * x.shape[-1]
            rows = torch.arange(x.shape[0], device=x.device) * n_pixels
            rows = rows + centre[0] * x.shape[-1] + centre[1]  # each patch's own pixel
            z = logits[:, centre[0], centre[1]]
            weight = torch.sigmoid(z) * torch.sigmoid(-z)
            diagonal = []
            for factor in factors:
                left, right = factor.left[rows], factor.right[rows]
                jac = torch.einsum("nor,nir->noi", left, right)
                diagonal.append(torch.einsum("n,noi->oi", weight, jac * jac).reshape(-1))
            f = torch.stack([torch.zeros_like(z), z], dim=-1)
            loss = self.factor * self.lossfunc(f, y)
            return loss.detach(), torch.cat(diagonal).detach()

    return PatchDiagonalGGN


class PixelBernoulliLayer(nn.Module):
    """The final 1x1 conv as a per-pixel linear map returning two logits ``[0, z]``.

    Input (N, C) pixel features; output (N, 2). Parameters in laplace-torch's vector order:
    ``linear.weight`` (1, C) then ``linear.bias`` (1,).
    """

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, dtype: torch.dtype = torch.float64) -> PixelBernoulliLayer:
        layer = cls(conv.in_channels)
        with torch.no_grad():
            layer.linear.weight.copy_(conv.weight.detach().reshape(1, -1))
            layer.linear.bias.copy_(conv.bias.detach().reshape(1))
        return layer.to(dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.linear(features)
        return torch.cat([torch.zeros_like(z), z], dim=-1)


def pixel_subset(row: int, n_pixels: int, per_row: int, seed: int) -> np.ndarray | None:
    """Sorted flat pixel indices of ``row`` used for the fit (None = every pixel)."""
    if per_row >= n_pixels:
        return None
    rng = np.random.default_rng(derive_seed(seed, "laplace_fit_pixels", row))
    return np.sort(rng.choice(n_pixels, size=per_row, replace=False))


def pixels_per_row(n_rows: int, n_pixels: int, max_pixels: int | None) -> int:
    """Pixels taken from every row so that the fit uses at most ``max_pixels`` in total."""
    if max_pixels is None or n_rows * n_pixels <= max_pixels:
        return n_pixels
    return max(1, max_pixels // n_rows)


class PixelFeatureStream(IterableDataset):
    """(features (n, C) float64, labels (n,) int64) chunks of a split, row batch by row batch.

    ``len()`` is the number of pixels used (laplace-torch reads it as ``n_data``).
    """

    def __init__(
        self,
        head: NoImageHead,
        h5_path: Path,
        logit_clip: float,
        per_row: int,
        seed: int,
        batch_rows: int,
    ) -> None:
        self.head, self.h5_path, self.logit_clip = head, Path(h5_path), logit_clip
        self.per_row, self.seed, self.batch_rows = per_row, seed, batch_rows
        self.n_rows = split_num_rows(h5_path)

    def __len__(self) -> int:
        return self.n_rows * self.per_row

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = iter_split_batches(self.h5_path, self.batch_rows, self.logit_clip)
        for batch in tqdm(
            batches, total=math.ceil(self.n_rows / self.batch_rows), desc="laplace fit", leave=False
        ):
            feats = flat_features(self.head, batch.inputs)
            labels = batch.gt_mask.flatten(1).long()
            n_pixels = feats.shape[1]
            xs, ys = [], []
            for offset in range(feats.shape[0]):
                subset = pixel_subset(batch.start + offset, n_pixels, self.per_row, self.seed)
                xs.append(feats[offset] if subset is None else feats[offset, subset])
                ys.append(labels[offset] if subset is None else labels[offset, subset])
            yield torch.cat(xs), torch.cat(ys)


def make_laplace(
    layer: nn.Module,
    prior_precision: float,
    temperature: float,
    approx: str = "diagonal",
    backend: str = BACKEND_NAME,
) -> Any:
    """A laplace-torch Laplace over every weight of ``layer`` (a :class:`PixelBernoulliLayer`
    or a :class:`PatchHead`), classification on the two logits ``[0, z]``.

    ``approx`` is one of :data:`HESSIAN_STRUCTURES`; ``backend`` one of the names above
    (:func:`backend_name`).
    """
    laplace, asdl_ggn = import_laplace()
    from laplace.curvature import CurvlinopsGGN

    backends = {
        BACKEND_NAME: asdl_ggn,
        CURVLINOPS_BACKEND_NAME: CurvlinopsGGN,
        PATCH_DIAGONAL_BACKEND_NAME: _patch_diagonal_ggn(),
    }
    return laplace.Laplace(
        layer,
        "classification",
        subset_of_weights="all",
        hessian_structure=HESSIAN_STRUCTURES[approx],
        backend=backends[backend],
        prior_precision=float(prior_precision),
        temperature=float(temperature),
    )


def rebuild_laplace(laplace_state: Mapping[str, Any], head: NoImageHead) -> Any:
    """A fitted DiagLaplace from a saved ``la.state_dict()`` and the head it was fitted on."""
    layer = PixelBernoulliLayer.from_conv(head.final_conv, dtype=laplace_state["mean"].dtype)
    prior = laplace_state["prior_precision"]
    la = make_laplace(layer, float(prior.reshape(-1)[0]), float(laplace_state["temperature"]))
    la.load_state_dict(dict(laplace_state))
    return la


class PatchHead(nn.Module):
    """The whole head as a model of one pixel: its 5x5 input patch -> two logits ``[0, z]``.

    The head is fully convolutional with a 5x5 receptive field, so each output pixel is an
    independent data point of laplace-torch: its (channels_in + 1, 5, 5) patch, the last
    channel an "inside the image" indicator. The head zero-pads its *hidden* layer as well as
    its input, so plain zero-padding of the patch is wrong near the border; multiplying the
    first conv's output by the indicator restores it (then the patch model reproduces the
    full-image logits, tests/unit/test_posterior_variants.py). Parameter names and order are
    the head's (``trunk.0``, ``trunk.2``, ``final_conv``), so laplace-torch's parameter vector
    is :func:`~laplace_head.bayes.jacobian.parameter_vector` of ``all_layers``.
    """

    def __init__(self, head: NoImageHead, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        conv1, conv2 = head.trunk[0], head.trunk[2]
        self.trunk = nn.Sequential(
            nn.Conv2d(conv1.in_channels, conv1.out_channels, 3),
            nn.ReLU(),
            nn.Conv2d(conv2.in_channels, conv2.out_channels, 3),
            nn.ReLU(),
        )
        self.final_conv = nn.Conv2d(head.final_conv.in_channels, 1, 1)
        self.to(dtype)
        with torch.no_grad():
            for mine, theirs in zip(self.parameters(), head.parameters(), strict=True):
                mine.copy_(theirs.detach())

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        inside = patches[:, -1:, 1:4, 1:4]
        hidden = self.trunk[1](self.trunk[0](patches[:, :-1])) * inside
        z = self.final_conv(self.trunk[3](self.trunk[2](hidden))).reshape(-1, 1)
        return torch.cat([torch.zeros_like(z), z], dim=-1)


def pixel_patches(inputs: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) head inputs -> (B, H*W, C + 1, 5, 5) zero-padded patches + indicator."""
    batch, channels, height, width = inputs.shape
    inside = inputs.new_ones(batch, 1, height, width)
    stacked = torch.cat([inputs, inside], dim=1)
    patches = F.unfold(stacked, 5, padding=2)  # (B, (C + 1) * 25, H * W)
    return patches.transpose(1, 2).reshape(batch, height * width, channels + 1, 5, 5)


class PixelPatchStream(PixelFeatureStream):
    """(patches (n, C + 1, 5, 5) float64, labels (n,) int64) chunks for the all-layer fit."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = iter_split_batches(self.h5_path, self.batch_rows, self.logit_clip)
        for batch in tqdm(
            batches, total=math.ceil(self.n_rows / self.batch_rows), desc="laplace fit", leave=False
        ):
            patches = pixel_patches(batch.inputs.double())
            labels = batch.gt_mask.flatten(1).long()
            n_pixels = patches.shape[1]
            xs, ys = [], []
            for offset in range(patches.shape[0]):
                subset = pixel_subset(batch.start + offset, n_pixels, self.per_row, self.seed)
                xs.append(patches[offset] if subset is None else patches[offset, subset])
                ys.append(labels[offset] if subset is None else labels[offset, subset])
            yield torch.cat(xs), torch.cat(ys)


def flat_features(head: NoImageHead, inputs: torch.Tensor) -> torch.Tensor:
    """Trunk features of (B, 3, H, W) inputs as (B, H*W, C) float64."""
    with torch.no_grad():
        feats = head.features(inputs)
    return feats.flatten(2).transpose(1, 2).double()
