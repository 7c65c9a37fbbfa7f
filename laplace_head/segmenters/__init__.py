"""Frozen base segmenters behind one interface, and a registry of them.

``SEGMENTER_REGISTRY`` is a plain dict mapping a backend name (``sam.backend`` in the config) to
a builder, in the style of segment_anything's ``sam_model_registry``. Builders import their
backend lazily, so choosing ``random_walker`` never imports segment_anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from laplace_head.segmenters.base import BaseSegmenter, Prediction


def _build_sam(**kwargs: Any) -> BaseSegmenter:
    """``SamSegmenter(checkpoint=, model_type=, device=, model=)``."""
    from laplace_head.segmenters.sam import SamSegmenter

    return SamSegmenter(**kwargs)


def _build_random_walker(**kwargs: Any) -> BaseSegmenter:
    """``RandomWalkerSegmenter(max_side=, beta=, mode=)``."""
    from laplace_head.segmenters.random_walker import RandomWalkerSegmenter

    return RandomWalkerSegmenter(**kwargs)


SEGMENTER_REGISTRY: dict[str, Callable[..., BaseSegmenter]] = {
    "sam": _build_sam,
    "random_walker": _build_random_walker,
}


def build_segmenter(backend: str, **kwargs: Any) -> BaseSegmenter:
    """Build the base segmenter registered as ``backend`` with the builder's keyword arguments.

    Raises
    ------
    ValueError
        If ``backend`` is not registered (the message lists the valid names).
    """
    if backend not in SEGMENTER_REGISTRY:
        valid = ", ".join(sorted(SEGMENTER_REGISTRY))
        raise ValueError(f"unknown base segmenter backend {backend!r}; valid backends: {valid}")
    return SEGMENTER_REGISTRY[backend](**kwargs)


def build_segmenter_from_settings(
    backend: str,
    checkpoint: str | None = None,
    model_type: str = "vit_h",
    device: str = "auto",
    random_walker_max_side: int = 160,
    random_walker_beta: float = 2000.0,
) -> BaseSegmenter:
    """Build the configured base segmenter from the ``sam`` config section's values.

    Only the values the chosen backend uses are read: ``checkpoint``, ``model_type`` and
    ``device`` for ``sam``; ``random_walker_max_side`` and ``random_walker_beta`` for
    ``random_walker``.
    """
    if backend == "sam":
        return build_segmenter("sam", checkpoint=checkpoint, model_type=model_type, device=device)
    if backend == "random_walker":
        return build_segmenter(
            "random_walker", max_side=random_walker_max_side, beta=random_walker_beta
        )
    return build_segmenter(backend)  # raises the ValueError listing the valid backends


__all__ = [
    "SEGMENTER_REGISTRY",
    "BaseSegmenter",
    "Prediction",
    "build_segmenter",
    "build_segmenter_from_settings",
]
