"""The annotator: a web page served by a local process, where a person segments images with the
run's posterior (calibrated mask, uncertainty heat maps, suggested clicks) and saves masks that
a new run takes as ``data.masks_root``.

- :mod:`~laplace_head.annotate.catalog`: the images (manifests or a folder) and the id rule.
- :mod:`~laplace_head.annotate.annotator`: :class:`~laplace_head.annotate.annotator.Annotator`,
  click sessions per image (LRU of embeddings, one lock per image), overlays, saving.
- :mod:`~laplace_head.annotate.store`: the saved masks and sidecars (one owner of the format).
- :mod:`~laplace_head.annotate.server`: the Starlette app and uvicorn (``python -m
  laplace_head annotate``); the page is ``static/`` (plain HTML/JS/CSS).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from laplace_head.layout import ProjectLayout

__all__ = ["build_annotator"]


def build_annotator(
    config: Mapping[str, Any],
    layout: ProjectLayout,
    out: str | os.PathLike,
    images: str | os.PathLike | None = None,
    variant: str | None = None,
    cache_size: int | None = None,
    device: str | None = None,
) -> Any:
    """An :class:`~laplace_head.annotate.annotator.Annotator` for a resolved config.

    Parameters
    ----------
    config
        The resolved config (:func:`laplace_head.config.load_configs`): the base segmenter, the
        click rule and, without ``images``, ``data.images_root``.
    layout
        The run's layout (``ProjectLayout(project_root).with_run(run_id)``, for a posterior
        variant ``.for_posterior(variant)``): its ``laplace_dir`` is the posterior; without
        ``images`` its manifests list the images.
    out
        The masks root to save into.
    images
        A folder of ``<class>/<stem>`` images to annotate instead of the manifests' images.
    variant
        The ablation variant's name (recorded in the sidecars), None for the run's posterior.
    cache_size
        Live sessions kept (default :data:`~laplace_head.annotate.annotator.DEFAULT_CACHE_SIZE`).
    device
        auto | cuda | cpu (default: ``sam.device``).
    """
    from laplace_head.annotate.annotator import DEFAULT_CACHE_SIZE, Annotator
    from laplace_head.annotate.catalog import ImageCatalog
    from laplace_head.annotate.store import MaskStore
    from laplace_head.interactive.predictor import InteractivePredictor

    if images is not None:
        catalog = ImageCatalog.from_folder(images)
    else:
        catalog = ImageCatalog.from_manifests(layout.project(), config["data"]["images_root"])
    predictor = InteractivePredictor.from_config(config, layout.laplace_dir, device=device)
    provenance = {
        "run_id": layout.run_id,
        "posterior_variant": variant,
        "head": layout.head_variant,
        "laplace_dir": str(layout.laplace_dir),
    }
    return Annotator(
        predictor,
        catalog,
        MaskStore(out),
        provenance,
        cache_size=DEFAULT_CACHE_SIZE if cache_size is None else cache_size,
    )
