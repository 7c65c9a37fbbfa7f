"""The posterior variants of stage 6: which weights (layer) and which covariance (structure).

A variant is the pair of config keys ``laplace.target_layer`` (:class:`TargetLayer`) and
``laplace.approx`` (:class:`Approx`). Every other name of the same choice is a property of
:class:`PosteriorVariant`, so a translation lives in one place:

=================  ============  ===========  ===========  =================  ================
target_layer       approx        ``subset``   structure    subset_of_weights  backend
=================  ============  ===========  ===========  =================  ================
final_conv         diagonal      last_layer   diag         last_layer         AsdlGGN
final_conv         full          last_layer   full         last_layer         CurvlinopsGGN
all                diagonal      all_layers   diag         all                PatchDiagonalGGN
all                kron          all_layers   kron         all                CurvlinopsGGN
=================  ============  ===========  ===========  =================  ================

``subset`` and ``hessian_structure`` are the names recorded in laplace_state.pt and
posterior_meta.json; ``subset_of_weights``, ``hessian_structure`` and ``backend`` are
laplace-torch's names (its ``SubsetOfWeights`` / ``HessianStructure`` enums, and the curvature
backend that :mod:`laplace_head.bayes.laplace_torch`, the one module that imports laplace-torch,
maps to a class). This module imports nothing heavy: the config loader validates variants with
it.

Backends: AsdlGGN computes the exact GGN diagonal of the last layer cheaply; every other
variant uses curvlinops' GGN (AsdlGGN's diagonal of the patch model's first conv disagreed with
the exact one). For the all-layer diagonal, CurvlinopsGGN builds per-pixel Jacobians by
autograd (~70 ms a pixel on 2 CPU cores), so PatchDiagonalGGN computes the same GGN diagonal
from the closed-form Jacobians of :mod:`laplace_head.bayes.jacobian`, ~1000x faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class TargetLayer(str, Enum):
    """The weights the posterior covers (``laplace.target_layer``)."""

    FINAL_CONV = "final_conv"  # the final 1x1 conv on the frozen trunk features
    ALL = "all"  # every weight of the head, each pixel's 5x5 input patch one observation


class Approx(str, Enum):
    """The structure of the posterior covariance (``laplace.approx``)."""

    DIAGONAL = "diagonal"
    FULL = "full"
    KRON = "kron"


ASDL_GGN = "AsdlGGN"
CURVLINOPS_GGN = "CurvlinopsGGN"
PATCH_DIAGONAL_GGN = "PatchDiagonalGGN"

#: The variants, with their (subset, hessian_structure, subset_of_weights, backend) names.
_NAMES: dict[tuple[TargetLayer, Approx], tuple[str, str, str, str]] = {
    (TargetLayer.FINAL_CONV, Approx.DIAGONAL): ("last_layer", "diag", "last_layer", ASDL_GGN),
    (TargetLayer.FINAL_CONV, Approx.FULL): ("last_layer", "full", "last_layer", CURVLINOPS_GGN),
    (TargetLayer.ALL, Approx.DIAGONAL): ("all_layers", "diag", "all", PATCH_DIAGONAL_GGN),
    (TargetLayer.ALL, Approx.KRON): ("all_layers", "kron", "all", CURVLINOPS_GGN),
}


def _valid() -> str:
    return ", ".join(f"{layer.value} + {approx.value}" for layer, approx in _NAMES)


@dataclass(frozen=True)
class PosteriorVariant:
    """One posterior variant; ``PosteriorVariant("final_conv", "full")`` takes the config's
    strings. Raises ``ValueError`` naming the valid pairs for any other pair."""

    layer: TargetLayer
    approx: Approx

    def __post_init__(self) -> None:
        try:
            layer, approx = TargetLayer(self.layer), Approx(self.approx)
        except ValueError:
            layer = approx = None
        if (layer, approx) not in _NAMES:
            raise ValueError(
                f"target_layer = {_plain(self.layer)!r} with approx = {_plain(self.approx)!r} "
                f"is not a posterior variant; valid (target_layer + approx): {_valid()}"
            )
        object.__setattr__(self, "layer", layer)
        object.__setattr__(self, "approx", approx)

    @classmethod
    def all(cls) -> tuple[PosteriorVariant, ...]:
        """Every valid variant."""
        return tuple(cls(layer, approx) for layer, approx in _NAMES)

    @classmethod
    def from_stored(cls, subset: str, hessian_structure: str) -> PosteriorVariant:
        """The variant recorded as (``subset``, ``hessian_structure``) in a saved posterior."""
        for variant in cls.all():
            if (variant.subset, variant.hessian_structure) == (subset, hessian_structure):
                return variant
        raise ValueError(f"no posterior variant is stored as {subset!r} / {hessian_structure!r}")

    @property
    def is_last_layer(self) -> bool:
        return self.layer is TargetLayer.FINAL_CONV

    @property
    def subset(self) -> str:
        """The parameter blocks covered, as saved: ``last_layer`` or ``all_layers``."""
        return _NAMES[(self.layer, self.approx)][0]

    @property
    def hessian_structure(self) -> str:
        """laplace-torch's ``hessian_structure`` (also the saved curvature's ``structure``)."""
        return _NAMES[(self.layer, self.approx)][1]

    @property
    def subset_of_weights(self) -> str:
        """The head's weights covered, in laplace-torch's ``subset_of_weights`` vocabulary."""
        return _NAMES[(self.layer, self.approx)][2]

    @property
    def backend(self) -> str:
        """The name of the laplace-torch curvature backend that fits this variant."""
        return _NAMES[(self.layer, self.approx)][3]

    def __str__(self) -> str:
        return f"{self.layer.value}/{self.approx.value}"


def _plain(value: object) -> object:
    return value.value if isinstance(value, Enum) else value
