"""The one seam to laplace-torch: its import, the models it fits, the backends, its curvature.

Every use of the ``laplace`` package goes through this module. A posterior variant
(:class:`~laplace_head.bayes.variant.PosteriorVariant`) picks the model and the backend:

* ``final_conv``: the final 1x1 conv is a C -> 1 linear map applied to every pixel's trunk
  features, so each pixel is one Bernoulli observation. :class:`PixelBernoulliLayer` wraps that
  map to emit two logits ``[0, z]``: laplace-torch's ``classification`` likelihood (softmax +
  cross-entropy) then *is* the per-pixel Bernoulli, since ``softmax([0, z])[1] = sigmoid(z)``.
  Never flatten the pixels of an image into one N-way softmax - that is a different, wrong model.
* ``all``: :class:`PatchHead`, the whole head as a model of one pixel's 5x5 input patch.

laplace-torch covers every weight of that model (``subset_of_weights="all"`` of the wrapper,
:data:`WRAPPER_SUBSET`), which is the head's last layer or all of it as the variant says. The
models run in float64, so the accumulated curvature is exact to ~1e-12 relative whatever the
number of pixels. :func:`curvature_from_laplace` reads the fitted curvature back into the one
form of :mod:`laplace_head.bayes.curvature`.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from torch import nn

from laplace_head.bayes.curvature import BlockCurvature, CurvatureBlock
from laplace_head.bayes.pixels import flat_features, pixel_patches
from laplace_head.bayes.variant import (
    ASDL_GGN,
    CURVLINOPS_GGN,
    PATCH_DIAGONAL_GGN,
    Approx,
    PosteriorVariant,
    TargetLayer,
)
from laplace_head.model.head import NoImageHead

#: laplace-torch's ``subset_of_weights`` of the wrapper models: the variant's weights are all
#: of them (the head's own subset is :attr:`PosteriorVariant.subset_of_weights`).
WRAPPER_SUBSET = "all"
LIKELIHOOD = "classification"
# torch deprecates its own torch.jit.script, which asdl (imported by laplace-torch) calls at
# import time and torch's forward-mode AD calls when a fit's first GGN product (curvlinops)
# loads its decompositions: a FutureWarning per call, none of them ours to act on.
JIT_SCRIPT_WARNING = r"`torch\.jit\.script` is deprecated"
# asdl registers module backward hooks that torch flags while fitting; the GGN is unaffected.
ASDL_HOOK_WARNING = r"Using a non-full backward hook when the forward contains multiple"


# laplace-torch's curvature package logs, through the root logger at import, one INFO line per
# optional backend it does not find (the old asdfghjkl one with a pip command): it lands in every
# fit's log, and this workflow uses none of those backends.
ABSENT_BACKEND_MESSAGE = "backend not available"


def _is_absent_backend_notice(record: logging.LogRecord) -> bool:
    """False for laplace-torch's INFO "<backend> backend not available" records at import."""
    return not (
        record.levelno == logging.INFO
        and ABSENT_BACKEND_MESSAGE in record.getMessage()
        and f"{os.sep}laplace{os.sep}" in record.pathname  # laplace-torch's package
    )


def import_laplace() -> Any:
    """Import laplace-torch, filtering only asdl's jit FutureWarning and laplace-torch's INFO
    notices of optional curvature backends it does not find (root logger, during the import)."""
    root = logging.getLogger()
    root.addFilter(_is_absent_backend_notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=JIT_SCRIPT_WARNING, category=FutureWarning)
            import laplace
            import laplace.curvature  # noqa: F401 - imports asdl under the filter
    finally:
        root.removeFilter(_is_absent_backend_notice)
    return laplace


def laplace_torch_version() -> str:
    """The installed laplace-torch version."""
    try:
        return version("laplace-torch")
    except PackageNotFoundError:
        return str(getattr(import_laplace(), "__version__", "unknown"))


@functools.cache
def _patch_diagonal_ggn() -> type:
    """laplace-torch's CurvlinopsGGN with the exact GGN diagonal of a :class:`PatchHead`
    computed in closed form (Bernoulli GGN: ``sum_u p_u (1 - p_u) J_u^2``)."""
    from laplace.curvature import CurvlinopsGGN

    from laplace_head.bayes.jacobian import jacobian_factors

    class PatchDiagonalGGN(CurvlinopsGGN):
        def diag(self, x: torch.Tensor, y: torch.Tensor, **kwargs: Any):
            centre = (x.shape[-2] // 2, x.shape[-1] // 2)
            logits, factors = jacobian_factors(self.model, x[:, :-1], TargetLayer.ALL, x[:, -1:])
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


def backend_class(name: str) -> type:
    """The laplace-torch curvature backend class of a :attr:`PosteriorVariant.backend` name."""
    laplace = import_laplace()
    backends = {
        ASDL_GGN: laplace.curvature.AsdlGGN,
        CURVLINOPS_GGN: laplace.curvature.CurvlinopsGGN,
        PATCH_DIAGONAL_GGN: _patch_diagonal_ggn(),
    }
    return backends[name]


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


class PatchHead(nn.Module):
    """The whole head as a model of one pixel: its 5x5 input patch -> two logits ``[0, z]``.

    The head is fully convolutional with a 5x5 receptive field, so each output pixel is an
    independent data point of laplace-torch: its (channels_in + 1, 5, 5) patch, the last
    channel an "inside the image" indicator. The head zero-pads its *hidden* layer as well as
    its input, so plain zero-padding of the patch is wrong near the border; multiplying the
    first conv's output by the indicator restores it (then the patch model reproduces the
    full-image logits, tests/unit/test_posterior_variants.py). Parameter names and order are
    the head's (``trunk.0``, ``trunk.2``, ``final_conv``), so laplace-torch's parameter vector
    is :func:`~laplace_head.bayes.jacobian.parameter_vector` of ``all``.
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


def laplace_model(
    head: NoImageHead, variant: PosteriorVariant
) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """The model laplace-torch fits for ``variant`` and the map from (B, 3, H, W) head inputs
    to its per-pixel inputs (B, H*W, ...) (a :class:`~laplace_head.bayes.pixels.PixelStream`'s
    ``per_pixel``)."""
    if variant.is_last_layer:
        return PixelBernoulliLayer.from_conv(head.final_conv), functools.partial(
            flat_features, head
        )
    return PatchHead(head), lambda inputs: pixel_patches(inputs.double())


def make_laplace(
    model: nn.Module,
    variant: PosteriorVariant,
    prior_precision: float,
    temperature: float,
    backend: str | None = None,
) -> Any:
    """A laplace-torch Laplace over every weight of ``model`` (:func:`laplace_model`),
    classification on the two logits ``[0, z]``, with the variant's structure and backend
    (``backend`` names another one, e.g. a reference to check a backend against)."""
    laplace = import_laplace()
    return laplace.Laplace(
        model,
        LIKELIHOOD,
        subset_of_weights=WRAPPER_SUBSET,
        hessian_structure=variant.hessian_structure,
        backend=backend_class(backend or variant.backend),
        prior_precision=float(prior_precision),
        temperature=float(temperature),
    )


def fit_laplace_model(la: Any, data: Any) -> None:
    """``la.fit`` on an iterable of (inputs, labels) chunks, without asdl's hook warning or
    torch's jit deprecation (:data:`JIT_SCRIPT_WARNING`)."""
    from torch.utils.data import DataLoader

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ASDL_HOOK_WARNING, category=FutureWarning)
        warnings.filterwarnings("ignore", message=JIT_SCRIPT_WARNING, category=FutureWarning)
        la.fit(DataLoader(data, batch_size=None))


def _eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(matrix.double())
    return values.clamp_min(0.0), vectors


def curvature_from_laplace(
    la: Any, variant: PosteriorVariant, shapes: Sequence[tuple[str, int, int]]
) -> BlockCurvature:
    """The :class:`BlockCurvature` of a laplace-torch object fitted for ``variant``.

    ``shapes`` are the (name, out, in) blocks of :func:`~laplace_head.bayes.jacobian
    .block_shapes`; laplace-torch's parameter vector (and KFAC factor list) follows that order.
    """
    blocks: list[CurvatureBlock] = []
    if variant.approx is Approx.DIAGONAL:
        h = la.H.detach().double()
        offset = 0
        for name, n_out, n_in in shapes:
            size = n_out * n_in
            blocks.append(CurvatureBlock(name, h[offset : offset + size].reshape(n_out, n_in)))
            offset += size
        if offset != h.numel():
            raise ValueError(f"GGN diagonal has {h.numel()} entries; the blocks hold {offset}")
    elif variant.approx is Approx.FULL:
        if len(shapes) != 1 or shapes[0][1] != 1:
            raise ValueError("the full structure is for the last layer's single block only")
        values, vectors = _eigh(la.H.detach())
        blocks.append(CurvatureBlock(shapes[0][0], values.reshape(1, -1), None, vectors))
    else:  # kron: laplace-torch keeps the undecomposed factors in H_facs
        kfacs = la.H_facs.kfacs if getattr(la, "H_facs", None) is not None else la.H.kfacs
        if len(kfacs) != len(shapes):
            raise ValueError(f"{len(kfacs)} Kronecker blocks for {len(shapes)} parameter blocks")
        for (name, n_out, n_in), factors in zip(shapes, kfacs, strict=True):
            out_values, out_vectors = _eigh(factors[0])
            if len(factors) == 1:  # a bias: (out, out) alone
                blocks.append(CurvatureBlock(name, out_values.reshape(n_out, 1), out_vectors))
                continue
            in_values, in_vectors = _eigh(factors[1])
            if (out_values.numel(), in_values.numel()) != (n_out, n_in):
                raise ValueError(f"Kronecker factors of {name} do not match ({n_out}, {n_in})")
            blocks.append(
                CurvatureBlock(name, torch.outer(out_values, in_values), out_vectors, in_vectors)
            )
    return BlockCurvature(variant, blocks)
